"""Helpers for tests against real processes: a private MLflow store, registered models, the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd

from modelship.components.contract import StageContext
from modelship.core.ports import free_port
from modelship.core.settings import Settings
from modelship.datasets import log_datasets
from modelship.policies.schema import Policy
from modelship.registry.client import ModelRef, Registry
from modelship.registry.experiments import ensure_experiment

MODELSHIP = str(Path(sys.executable).parent / "modelship")


def wait_http(url: str, proc: subprocess.Popen[Any], log: Path, timeout: float = 120) -> None:
    """Wait until ``url`` answers 200, failing with the log's tail if ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{url} did not come up: {log.read_text()[-2000:]}")
        time.sleep(0.3)


@contextlib.contextmanager
def background(
    cmd: list[str], log: Path, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[Any]]:
    """A process for the length of a test, stopped (then killed) afterwards."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(env) if env else None
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def mlflow_server(root: Path, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """A real `mlflow server` (SQLite backend, served artifacts) on a free loopback port."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    full_env = {**os.environ, **(env or {})}
    with background(cmd, root / "server.log", full_env) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc, root / "server.log")
        yield url


def optimize_policy(model: str, **optimize: Any) -> Policy:
    """``model``'s policy with these keys of its ``optimize`` section replaced."""
    from modelship.policies.loader import load_policy

    base = load_policy(model).policy.model_dump(by_alias=True)
    base["optimize"].update(optimize)
    return Policy.model_validate(base)


def stage_context(
    settings: Settings,
    ref: ModelRef,
    policy: Policy,
    workdir: Path,
    registry: Registry | None = None,
) -> StageContext:
    """A stage's context outside a deployment (no MLflow run), as a test calls a stage."""
    return StageContext(ref=ref, policy=policy, registry=registry or Registry(), deployment=None,
                        workdir=workdir, settings=settings)  # fmt: skip


def settings_for(home: Path, tracking_uri: str | None = None) -> Settings:
    env = {"MODELSHIP_HOME": str(home)}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    settings = Settings.from_env(env)
    settings.prepare()
    return settings


def breast_cancer() -> tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.DataFrame]:
    from modelship.demo import split

    x_train, y_frame, reference, validation = split()
    return x_train, y_frame["target"], reference, validation


def register(
    settings: Settings,
    name: str,
    model: Any,
    x_train: pd.DataFrame,
    reference: pd.DataFrame,
    validation: pd.DataFrame,
    *,
    flavor: str = "sklearn",
    record_digest: bool = True,
    **log_kwargs: Any,
) -> str:
    """Log ``model`` with its evaluation data, register it under ``name``; its version."""
    import mlflow
    from mlflow.models import infer_signature

    registry = Registry()
    experiment = ensure_experiment(registry.client, settings, "tests")
    with (
        mlflow.start_run(experiment_id=experiment),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        signature = infer_signature(x_train, model.predict(x_train.head(5)))
        logger = getattr(mlflow, flavor).log_model
        info = logger(
            model, name="model", signature=signature, registered_model_name=name, **log_kwargs
        )
        log_datasets(validation, reference)
    version = str(info.registered_model_version)
    if record_digest:
        registry.record_digest(registry.resolve(name, version=version))
    return version


def register_forest(settings: Settings, name: str, data: Any, **log_kwargs: Any) -> str:
    """The demo's random forest (v1), registered with skops' tree type trusted on purpose."""
    from modelship.demo import train_model

    x, y, ref, val = data
    return register(
        settings, name, train_model("forest", x, y), x, ref, val,
        skops_trusted_types=["sklearn.tree._tree.Tree"], **log_kwargs,
    )  # fmt: skip


def artifact_dir(name: str, version: str) -> Path:
    """Where the version's files live in the local artifact store (to corrupt them on purpose)."""
    import mlflow

    client = mlflow.MlflowClient()
    source = client.get_model_version(name, version).source
    model_id = source.removeprefix("models:/")
    location = client.get_logged_model(model_id).artifact_location
    return Path(location.removeprefix("file://"))


def cli(
    home: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    full_env["MODELSHIP_HOME"] = str(home)
    full_env.update(env or {})
    return subprocess.run(
        [MODELSHIP, *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )


def deploy_json(
    home: Path, *args: str, env: Mapping[str, str] | None = None
) -> tuple[int, dict[str, Any] | None, str]:
    """Run ``modelship deploy --json``: exit code, the summary (None on error), stderr."""
    proc = cli(home, "deploy", *args, "--json", env=env)
    summary = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, summary, proc.stderr


def version_tags(name: str) -> dict[str, dict[str, str]]:
    return {v.version: dict(v.tags) for v in Registry().versions(name)}


def aliases(name: str) -> dict[str, str]:
    import mlflow

    return {k: str(v) for k, v in mlflow.MlflowClient().get_registered_model(name).aliases.items()}


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)


def bento_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BENTOML_"))}
    env.update(MODELSHIP_HOME=str(home), BENTOML_HOME=str(home / "bentoml"))
    env["BENTOML_DO_NOT_TRACK"] = "true"
    env.update(extra)
    return env


@contextlib.contextmanager
def bento_server(
    home: Path, tag: str, log: Path, *, ready: bool = True, **env: str
) -> Iterator[tuple[str, subprocess.Popen[Any]]]:
    """``bentoml serve TAG`` from modelship's Bento store, as a user would start it."""
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "bentoml"), "serve", tag, "--port", str(port),
           "--host", "127.0.0.1"]  # fmt: skip
    with background(cmd, log, bento_env(home, **env)) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz" if ready else f"{url}/healthz", proc, log)
        yield url, proc


# -- a gateway with two stand-in servers, HTTP stand-ins in a thread -----------------------------


#: the admin token the test gateways run with (MODELSHIP_GATEWAY_TOKEN)
TOKEN = "test-token-123"
#: a request body the stand-in servers answer
BODY = b'{"inputs": [[1.0]]}'


def call(
    url: str, method: str = "GET", body: Any = None, token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """A JSON request (with the admin token unless told otherwise): the status and the answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if token:
        request.add_header("authorization", f"Bearer {token}")
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Stack:
    """Two stand-in model servers (tests/servers/variant.py) and a gateway, on free ports."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports = {"champion": free_port(), "challenger": free_port(), "gateway": free_port()}
        self.url = f"http://127.0.0.1:{self.ports['gateway']}"

    def start_backend(self, name: str, *extra: str) -> None:
        port = self.ports[name]
        log = self.tmp / f"{name}.log"
        cmd = [sys.executable, "-m", "tests.servers.variant", str(port), name, *extra]
        self.procs[name] = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{port}/readyz", self.procs[name], log, timeout=30)

    def start_gateway(self, *extra: str) -> None:
        log = self.tmp / "gateway.log"
        cmd = [sys.executable, "-m", "modelship.gateway", "--port", str(self.ports["gateway"]),
               "--champion", f"http://127.0.0.1:{self.ports['champion']}@v1",
               "--challenger", f"http://127.0.0.1:{self.ports['challenger']}@v2",
               "--health-interval", "0.2", *extra]  # fmt: skip
        env = os.environ | {"MODELSHIP_GATEWAY_TOKEN": TOKEN}
        self.procs["gateway"] = subprocess.Popen(
            cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env
        )
        wait_http(f"{self.url}/readyz", self.procs["gateway"], log, timeout=30)

    def weights(self, **body: Any) -> dict[str, Any]:
        status, answer = call(f"{self.url}/admin/weights", "PUT", body)
        assert status == 200, answer
        return answer

    def predict(self, headers: dict[str, str] | None = None) -> str:
        status, answer = call(f"{self.url}/predict", "POST", {"inputs": [[1.0]]}, None, headers)
        assert status == 200, answer
        return str(answer["variant"])

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def gateway_stack(tmp: Path, *gateway_args: str) -> Iterator[Stack]:
    """Both stand-in servers and a gateway in front (``gateway_args`` added), stopped after."""
    s = Stack(tmp)
    try:
        s.start_backend("champion")
        s.start_backend("challenger")
        s.start_gateway(*gateway_args)
        yield s
    finally:
        s.stop()


@contextlib.contextmanager
def http_stub(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served from a thread on a free loopback port: its URL; shut down afterwards."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


# -- a Bento without the pipeline ----------------------------------------------------------------


def quick_bento(home: Path, work: Path, **serving: Any) -> str:
    """A Bento of a small classifier on the demo's columns, built straight from its ONNX file.

    No registry and no gates: for tests of the service's HTTP surface, which need the real
    ``bentoml serve`` of a real Bento in seconds rather than a deployment in minutes. ``serving``
    overrides fields of its ``serving.json`` (``server="bentoml"``, ``max_body_bytes=...``).
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_breast_cancer
    from sklearn.tree import DecisionTreeClassifier

    from modelship.components.package import bento as bento_build
    from modelship.core.records import OptimizeRecord

    frame = load_breast_cancer(as_frame=True)
    x, y = frame.data.astype("float32"), frame.target
    model = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x, y)
    optimized = work / "optimized"
    optimized.mkdir(parents=True, exist_ok=True)
    onx = to_onnx(model, initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
                  options={id(model): {"zipmap": False}})  # fmt: skip
    (optimized / "model.onnx").write_bytes(onx.SerializeToString())
    record = OptimizeRecord(variant="fp32", columns=list(x.columns), task="classification",
                            classes=[int(c) for c in model.classes_])  # fmt: skip
    files, packages = bento_build.assemble(work / "context", optimized, work, record)
    config = bento_build.serving_config(
        "hostile", "1", "sha256:" + "0" * 64, record, list(x.columns),
        Policy().package, files,
    )  # fmt: skip
    config = config.model_copy(update=serving)
    built = bento_build.build(work / "context", config, packages, labels={"owner": "tests"},
                              bentoml_home=home / "bentoml", log=work / "build.log")  # fmt: skip
    return built.tag
