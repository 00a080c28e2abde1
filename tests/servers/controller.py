"""A rollout controller in its own process, against a running gateway: the resume test kills it.

python -m tests.servers.controller HOME GATEWAY_URL POLICY_JSON

The token comes from MODELSHIP_GATEWAY_TOKEN; registry calls are appended to HOME/registry.log
(the MLflow side is covered by the deploy tests); no inference log (drift is not judged).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from modelship.components.rollout.controller import Controller
from modelship.components.rollout.state import StatusStore
from modelship.components.targets.local import GatewayRouter
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
    controller = Controller(StatusStore(home, "m"), router, router, NoLogs(),
                            FileRegistry(home / "registry.log"),
                            Rollout.model_validate_json(policy_json))  # fmt: skip
    status = controller.begin("m", "1", "2", "h")
    print(controller.run(status).reason, flush=True)


if __name__ == "__main__":
    main()
