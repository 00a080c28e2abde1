"""A real webhook from a real `mlflow server` to `modelship webhook serve`, which starts the
deployment of the version just registered."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import mlflow
import psutil
import pytest

from modelship.core.ports import free_port
from modelship.core.tags import TAG_RUN
from modelship.registry.client import Registry
from tests.support import (
    MODELSHIP,
    background,
    breast_cancer,
    cli,
    mlflow_server,
    register_forest,
    settings_for,
    wait_http,
)

pytestmark = pytest.mark.slow
SECRET = "e2e-webhook-secret"


def test_registering_a_version_starts_its_deployment(tmp_path: Path) -> None:
    # MLflow delivers only to public https URLs unless told otherwise; the receiver is plain
    # http on loopback here (behind TLS in production)
    server_env = {
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "https,http",
    }
    with mlflow_server(tmp_path / "server", server_env) as tracking:
        home = tmp_path / "home"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
            "MLFLOW_TRACKING_URI": tracking,
            "MODELSHIP_HOME": str(home),
            "MODELSHIP_WEBHOOK_SECRET": SECRET,
        }
        port = free_port()
        receiver = [MODELSHIP, "webhook", "serve", "--port", str(port)]
        with background(receiver, tmp_path / "receiver.log", env) as proc:
            wait_http(f"http://127.0.0.1:{port}/healthz", proc, tmp_path / "receiver.log")
            url = f"http://127.0.0.1:{port}/webhooks/mlflow"
            registered = cli(home, "webhook", "register", url, env=env)
            assert registered.returncode == 0, registered.stderr
            settings = settings_for(home, tracking_uri=tracking)
            version = register_forest(settings, "breast-cancer", breast_cancer())
            deadline = time.monotonic() + 120
            while TAG_RUN not in Registry().resolve("breast-cancer", version=version).tags:
                assert time.monotonic() < deadline, (tmp_path / "receiver.log").read_text()[-3000:]
                time.sleep(1)
            deploys = psutil.Process(proc.pid).children(recursive=True)
            assert deploys  # the deployment runs as the receiver's child, just started
            # the receiver killed mid-deploy: its deploy (and the deploy's steps) end with it,
            # long before the deploy itself could have finished
            proc.send_signal(signal.SIGKILL)
            _, alive = psutil.wait_procs(deploys, timeout=10)
            assert not alive, [" ".join(p.cmdline()) for p in alive]
        log = (tmp_path / "receiver.log").read_text()
        assert f"model_version.created breast-cancer v{version}: started local deployment" in log
        assert SECRET not in log
    mlflow.set_tracking_uri(None)
