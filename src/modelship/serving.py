"""``modelship serve MODEL``: the champion behind the gateway, the previous champion kept warm.

What a model looks like in production on one machine: the gateway on the given port, the
champion's Bento behind it, and the previous champion's Bento beside it at weight 0, health
checked, so a rollback (by the drift monitor, or by hand) is one call to the gateway rather
than a server start. Where it runs is written to ``$MODELSHIP_HOME/serving/MODEL.json`` (the
admin token beside it, readable by this user only) for the monitor to find; both are removed
when it stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from modelship.components.serving.local import ServingRecord, gateway_launch, serving_paths
from modelship.components.serving.packaged import packaged_version
from modelship.components.serving.server import free_port, package_launch, pick_port, served
from modelship.core.errors import InputError
from modelship.core.settings import Settings
from modelship.registry.client import PREVIOUS, Registry


def serve(settings: Settings, model: str, host_port: int, log_dir: Path,
          say: Any = print) -> None:  # fmt: skip
    """Run until SIGTERM or Ctrl-C; everything it started is stopped on the way out."""
    registry = Registry()
    champion = registry.champion(model)
    if champion is None:
        raise InputError(f"{model} has no champion to serve",
                         hint=f"deploy a version first: modelship deploy {model}")  # fmt: skip
    main, _ = packaged_version(registry, champion)
    if main is None:
        raise InputError(f"{champion} has no Bento: it was not packaged",
                         hint=f"run `modelship deploy {model} --version {champion.version}`")  # fmt: skip
    previous = None
    with contextlib.suppress(InputError):
        previous = registry.resolve(model, alias=PREVIOUS)
    standby = packaged_version(registry, previous)[0] if previous is not None else None
    env = settings.child_env()
    port = pick_port(host_port, "--port", "pass another --port")
    token = settings.gateway_token or secrets.token_urlsafe(24)
    record_path, token_path = serving_paths(settings.home, model)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        backends = {}
        for variant, package in (("champion", main), ("challenger", standby)):
            if package is None:
                continue
            p = free_port()
            say(
                f"starting v{package.version} ({'standby' if variant != 'champion' else 'champion'})"
            )
            server = stack.enter_context(
                served(package_launch(package, p, env, None), p, log_dir / f"v{package.version}.log", 120)
            )  # fmt: skip
            backends[variant] = (server.url, package.version)
        gateway = stack.enter_context(
            served(gateway_launch(port, token, backends, None, env), port,
                   log_dir / "gateway.log", 30)
        )  # fmt: skip
        token_path.write_text(token)
        token_path.chmod(0o600)
        record = ServingRecord(model, gateway.url, os.getpid(), champion.version,
                               standby.version if standby else None)  # fmt: skip
        record_path.write_text(json.dumps(asdict(record)))
        stack.callback(record_path.unlink, missing_ok=True)
        stack.callback(token_path.unlink, missing_ok=True)
        say(f"serving {model} v{champion.version} on {gateway.url}/predict"
            + (f" (v{standby.version} warm for rollback)" if standby else ""))  # fmt: skip
        while not stop.wait(1.0):
            pass
