"""Serving on this machine: the gateway in front of Bentos, and where a running one is found.

``modelship serve`` writes a :class:`ServingRecord` (and the gateway's admin token beside it) under
``$MODELSHIP_HOME/serving/``; the monitor finds the live gateway through :func:`live_router`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from modelship.components.serving.server import Launch
from modelship.components.targets.local import GatewayRouter
from modelship.policies.schema import Policy


def log_root(policy: Policy, env: dict[str, str], home: Path) -> str:
    return (
        env.get("MODELSHIP_INFERENCE_LOG")
        or policy.package.inference_log.uri
        or str(home / "inference")
    )


def gateway_launch(port: int, token: str, backends: dict[str, tuple[str, str]],
                   sticky_header: str | None, env: dict[str, str]) -> Launch:  # fmt: skip
    """``python -m modelship.gateway`` in front of ``backends`` (variant: (url, version))."""
    cmd = [sys.executable, "-m", "modelship.gateway", "--port", str(port)]
    for variant, (url, version) in backends.items():
        cmd += [f"--{variant}", f"{url}@v{version}"]
    if sticky_header:
        cmd += ["--sticky-header", sticky_header]
    return Launch("gateway", cmd, {**env, "MODELSHIP_GATEWAY_TOKEN": token})


@dataclass(frozen=True)
class ServingRecord:
    model: str
    gateway: str
    pid: int
    champion: str
    standby: str | None

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def serving_paths(home: Path, model: str) -> tuple[Path, Path]:
    """Where ``modelship serve MODEL`` records its gateway, and the gateway's admin token."""
    folder = home / "serving"
    return folder / f"{model}.json", folder / f"{model}.token"


def live_router(home: Path, model: str) -> tuple[ServingRecord, GatewayRouter] | None:
    """The gateway serving ``model`` on this machine, if one is running."""
    record_path, token_path = serving_paths(home, model)
    try:
        record = ServingRecord(**json.loads(record_path.read_text()))
        token = token_path.read_text().strip()
    except (FileNotFoundError, ValueError, TypeError):
        return None
    if not record.alive():
        return None  # left behind by a serve that was killed
    return record, GatewayRouter(record.gateway, token)
