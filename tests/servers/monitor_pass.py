"""One drift monitor pass in its own process, against a running gateway: a test kills it.

python -m tests.servers.monitor_pass HOME MODEL GATEWAY_URL POLICY_JSON

The embedded store under HOME; the gateway's token from MODELSHIP_GATEWAY_TOKEN.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from modelship.components.monitor.stage import run_pass
from modelship.components.targets.local import GatewayRouter
from modelship.policies.schema import Policy
from modelship.registry.client import Registry
from tests.support import settings_for


def main(home: Path, model: str, gateway: str, policy: str) -> None:
    settings_for(home)
    router = GatewayRouter(gateway, os.environ["MODELSHIP_GATEWAY_TOKEN"])
    result = run_pass(model, Policy.model_validate_json(policy), registry=Registry(), home=home,
                      bentoml_home=home / "bentoml", log_root=str(home / "inference"),
                      router=router, log_reports=False, say=print)  # fmt: skip
    print(result.actions, flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
