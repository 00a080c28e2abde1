"""The same deploy against a real `mlflow server` (SQLite backend, served artifacts).

The test starts the server on a free loopback port, points modelship at it through
MLFLOW_TRACKING_URI, and stops it afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from modelship.demo import train_model
from tests.support import aliases, breast_cancer, deploy_json, mlflow_server, register, settings_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url
    mlflow.set_tracking_uri(None)


def test_deploy_against_a_tracking_server(server: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "home", tracking_uri=server)
    assert not settings.embedded
    x, y, ref, val = breast_cancer()
    model = "breast-cancer"
    version = register(
        settings, model, train_model("lightgbm", x, y), x, ref, val, flavor="lightgbm"
    )
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
    # the first version: promoted by the rollout stage at once, through the server's registry
    assert aliases(model) == {"champion": version}
    # nothing was written to an embedded store
    assert not (tmp_path / "home" / "mlflow.db").exists()
