"""A rollout controller in its own process, against a running gateway: the resume test kills it.

python -m tests.servers.controller HOME GATEWAY_URL POLICY_JSON

The token comes from MODELSHIP_GATEWAY_TOKEN; registry calls are appended to HOME/registry.log
(the MLflow side is covered by the deploy tests); no inference log (drift is not judged). With
MLFLOW_TRACKING_URI set, the status, commands and the controller's lease are in that MLflow
(as a controller in a pipeline pod keeps them), else in files under HOME.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from modelship.components.rollout.controller import Controller
from modelship.components.rollout.state import RolloutStore, StatusStore, rollout_store
from modelship.components.targets.local import GatewayRouter
from modelship.core.settings import Settings
from modelship.policies.schema import Rollout


class FileRegistry:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _note(self, *what: str) -> None:
        with self.path.open("a") as f:
            f.write(" ".join(what) + "\n")

    def started(self, model: str, challenger: str) -> None:
        self._note("started", challenger)

    def promoted(self, model: str, challenger: str) -> None:
        self._note("promoted", challenger)

    def rolled_back(self, model: str, challenger: str, reason: str) -> None:
        self._note("rolled_back", challenger, reason)


class NoLogs:
    def predictions(self, version: str, since: float) -> pd.DataFrame | None:
        return None


def main() -> None:
    home, url, policy_json = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    home.mkdir(parents=True, exist_ok=True)
    router = GatewayRouter(url, os.environ["MODELSHIP_GATEWAY_TOKEN"])
    settings = Settings.from_env()
    store: RolloutStore = (
        StatusStore(home, "m") if settings.embedded else rollout_store(settings, "m")
    )
    store.acquire()
    try:
        controller = Controller(store, router, router, NoLogs(), FileRegistry(home / "registry.log"),
                                Rollout.model_validate_json(policy_json))  # fmt: skip
        status = controller.begin("m", "1", "2", "h")
        print(controller.run(status).reason, flush=True)
    finally:
        store.release()


if __name__ == "__main__":
    main()
