"""Start the packaged model as production will, wait until it is ready, and always stop it.

A :class:`Launch` says how to start one server (``bentoml serve TAG``, or the same command
inside the OCI image with ``buildah run``); :func:`served` starts it in its own session on a
port checked to be free, waits for ``/readyz``, and on the way out (a failed gate, an error,
Ctrl-C or SIGTERM) stops the whole process group, removes the container, and checks the port
is free again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from modelship.components.containers import BUILDAH, remove_container
from modelship.core.errors import ModelshipError
from modelship.core.lifeline import tied
from modelship.core.ports import PortInUse, free_port, pick_port, port_free
from modelship.core.records import PackagedModel

__all__ = [
    "Launch",
    "NotReady",
    "PortInUse",
    "Server",
    "free_port",
    "pick_port",
    "port_free",
    "served",
]


class NotReady(ModelshipError):
    """The server did not become ready: the gate fails with this reason."""


@dataclass
class Launch:
    what: str
    cmd: list[str]
    env: dict[str, str]
    #: run after the process group is gone (a container to remove)
    cleanup: Callable[[], None] = field(default=lambda: None)


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    ready_s: float
    log: Path
    #: every process the server started, seen so far (BentoML's workers run in their own
    #: process groups, so a crashed arbiter leaves them behind unless they are known by pid)
    members: dict[int, Any] = field(default_factory=dict)

    def remember_members(self) -> None:
        import psutil

        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.members.setdefault(child.pid, child)
        except psutil.Error:
            pass

    def exited(self) -> str | None:
        code = self.proc.poll()
        if code is None:
            self.remember_members()
            return None
        return f"the server exited with code {code} during the load"


def bento_launch(tag: str, port: int, env: dict[str, str], cpus: list[int] | None) -> Launch:
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        tag,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return Launch(f"Bento {tag}", _pinned(cmd, cpus), env)


def _container_settings(env: dict[str, str], folder: Path) -> list[str]:
    """``buildah run`` options that give the container the inference log's place and the
    object store's settings from ``env``. A local log folder is mounted; the store's keys go in
    a 0600 credentials file in ``folder`` (mounted), never on the command line ``ps`` shows."""
    args: list[str] = []
    log = env.get("MODELSHIP_INFERENCE_LOG")
    if log:
        if "://" not in log:
            Path(log).mkdir(parents=True, exist_ok=True)
            args.append(f"--volume={log}:{log}")
        args.append(f"--env=MODELSHIP_INFERENCE_LOG={log}")
    endpoint = env.get("AWS_ENDPOINT_URL") or env.get("MLFLOW_S3_ENDPOINT_URL")
    if endpoint:
        args.append(f"--env=AWS_ENDPOINT_URL={endpoint}")
    if env.get("AWS_DEFAULT_REGION"):
        args.append(f"--env=AWS_DEFAULT_REGION={env['AWS_DEFAULT_REGION']}")
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        creds = folder / "credentials"
        creds.touch(mode=0o600)
        creds.write_text(f"[default]\naws_access_key_id = {env['AWS_ACCESS_KEY_ID']}\n"
                         f"aws_secret_access_key = {env['AWS_SECRET_ACCESS_KEY']}\n")  # fmt: skip
        args += [f"--volume={folder}:{folder}:ro", f"--env=AWS_SHARED_CREDENTIALS_FILE={creds}"]
    return args


def image_launch(
    image: str, port: int, cpus: list[int] | None, env: dict[str, str] | None = None
) -> Launch:
    """``bentoml serve`` inside ``image`` (buildah), with the serving settings of ``env``."""
    import shutil
    import tempfile

    container = subprocess.run(
        [*BUILDAH, "from", image], capture_output=True, text=True, check=True
    ).stdout.strip()
    secrets = Path(tempfile.mkdtemp(prefix="modelship-image-"))
    settings = _container_settings(env or {}, secrets)
    cmd = [*BUILDAH, "run", "--isolation", "chroot", *settings, container, "--",
           "bentoml", "serve", "bentos.service:ModelService", "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip

    def cleanup() -> None:
        remove_container(container)
        shutil.rmtree(secrets, ignore_errors=True)

    return Launch(f"image {image}", _pinned(cmd, cpus), dict(os.environ), cleanup=cleanup)


def package_launch(
    packaged: PackagedModel, port: int, env: dict[str, str], cpus: list[int] | None
) -> Launch:
    """Start a packaged version as production will: its image where one was built and buildah
    is here, else ``bentoml serve`` of its Bento (fetched from MLflow into the store at
    ``env``'s ``BENTOML_HOME`` when that store does not hold it as it passed the gates)."""
    import shutil

    from modelship.components.serving.bentostore import present_bento

    if packaged.image and shutil.which("buildah"):
        return image_launch(packaged.image, port, cpus, env)
    present_bento(packaged, Path(env.get("BENTOML_HOME") or os.environ["BENTOML_HOME"]))
    return bento_launch(packaged.bento, port, env, cpus)


def _pinned(cmd: list[str], cpus: list[int] | None) -> list[str]:
    if not cpus:
        return cmd
    return ["taskset", "-c", ",".join(str(c) for c in cpus), *cmd]


def _readiness(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
            return r.status, ""
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")[:300]
    except OSError as e:
        return 0, str(e)


def _wait_ready(server: Server, timeout_s: float) -> None:
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout_s:
        code = server.proc.poll()
        if code is not None:
            raise NotReady(
                f"the server exited with code {code} before it was ready: {_tail(server.log)}"
            )
        status, detail = _readiness(server.url)
        if status == 200:
            server.ready_s = time.monotonic() - started
            return
        last = f"/readyz answered {status} {detail}".strip() if status else "not listening yet"
        time.sleep(0.25)
    raise NotReady(
        f"not ready after {timeout_s:.0f} s (loadtest.timeout_ready_s); last: {last}; "
        f"log: {_tail(server.log)}"
    )


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(server: Server, grace_s: float = 15.0) -> None:
    """SIGTERM to the group and every known member (workers flush their logs), then SIGKILL."""
    import psutil

    proc = server.proc
    server.remember_members()
    members = [m for m in server.members.values() if m.is_running()]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    for member in members:
        with contextlib.suppress(psutil.Error):
            member.terminate()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (
        proc.poll() is None or _group_alive(proc.pid) or any(m.is_running() for m in members)
    ):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for member in members:
        with contextlib.suppress(psutil.Error):
            member.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


class _Interrupted(KeyboardInterrupt):
    pass


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted(f"interrupted by {signal.Signals(signum).name}")


@contextlib.contextmanager
def served(launch: Launch, port: int, log: Path, ready_timeout_s: float) -> Iterator[Server]:
    """The server, ready; stopped and its port freed however the block ends."""
    previous = None
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log.open("wb") as out:
            # its own session (the group is stopped as one), tied to this process' life
            proc = subprocess.Popen(tied(launch.cmd), stdout=out, stderr=subprocess.STDOUT,
                                    env=launch.env, start_new_session=True)  # fmt: skip
        server = Server(f"http://127.0.0.1:{port}", port, proc, 0.0, log)
        try:
            _wait_ready(server, ready_timeout_s)
            server.remember_members()
            yield server
        finally:
            _stop(server)
            launch.cleanup()
            deadline = time.monotonic() + 10
            while not port_free(port) and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
