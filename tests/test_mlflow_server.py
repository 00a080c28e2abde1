"""The same deploy against a real `mlflow server` (SQLite backend, served artifacts).

The test starts the server on a free loopback port, points modelship at it through
MLFLOW_TRACKING_URI, and stops it afterwards.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from modelship.demo import _train
from tests.support import aliases, breast_cancer, deploy_json, register, settings_for

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        mlflow.set_tracking_uri(None)


def test_deploy_against_a_tracking_server(server: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "home", tracking_uri=server)
    assert not settings.embedded
    x, y, ref, val = breast_cancer()
    model = "breast-cancer"
    version = register(settings, model, _train("lightgbm", x, y), x, ref, val, flavor="lightgbm")
    code, summary, err = deploy_json(
        tmp_path / "home", model, "--version", version, env={"MLFLOW_TRACKING_URI": server}
    )
    assert code == 0, err
    assert summary is not None and summary["outcome"] == "passed"
    run = mlflow.MlflowClient(server).get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith(
        "mlflow-artifacts:"
    )  # stored by the server, not locally
    assert "champion" not in aliases(model)  # validation alone never promotes
    # nothing was written to an embedded store
    assert not (tmp_path / "home" / "mlflow.db").exists()
