"""A deployment whose steps run elsewhere (pods of a cluster) and stop: each working step renews
the run's heartbeat; one silent for ``STALE_S`` reads as interrupted and the next deploy closes
it, one still beating refuses a second deploy of the same version. (The same-host case, a
process SIGKILLed here, is tests/test_crash.py.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from modelship.components import resolve
from modelship.core.errors import InputError
from modelship.core.settings import Settings
from modelship.core.tags import (
    RUN_ERROR,
    RUN_HEARTBEAT,
    RUN_OUTCOME,
    TAG_REASON,
    TAG_RUN,
    TAG_STATE,
)
from modelship.core.verdict import ModelState
from modelship.registry.client import Registry
from modelship.registry.deployments import STALE_S, DeploymentRun
from tests.support import register_forest


def _beat_from(run: DeploymentRun, seconds_ago: float, host: str) -> None:
    run.client.set_tag(run.run_id, RUN_HEARTBEAT, f"{time.time() - seconds_ago:.0f} {host}")


def test_a_deploy_elsewhere_that_stops_reporting_is_interrupted_and_closed_by_the_next(
    settings: Settings, data: Any, tmp_path: Path
) -> None:
    registry = Registry()
    ref = registry.resolve("far", version=register_forest(settings, "far", data))
    # what a resolve pod on a cluster leaves: the run open, the version validated, then its
    # next pod (optimize) killed with its node
    run = DeploymentRun.open(registry.client, settings, ref, digest="sha256:x", policy_hash="h",
                             policy_json="{}")  # fmt: skip
    registry.set_tag(ref, TAG_RUN, run.run_id)
    registry.set_state(ref, ModelState.VALIDATED, "passed")
    _beat_from(run, 40, "modelship-deploy-x7k2p-optimize")

    def deploy() -> resolve.Resolved:
        return resolve.run("far", ref.version, None, None, settings=settings, registry=registry,
                           dest=tmp_path / "model")  # fmt: skip

    # still beating: that deployment is under way, a second one is refused and changes nothing
    assert run.interrupted() is None
    with pytest.raises(InputError, match="being deployed now on modelship-deploy-x7k2p-optimize"):
        deploy()
    assert registry.client.get_run(run.run_id).info.status == "RUNNING"
    # silent past STALE_S: `modelship status` says interrupted, and the next deploy closes it
    _beat_from(run, STALE_S + 60, "modelship-deploy-x7k2p-optimize")
    said = run.interrupted()
    assert (
        said
        == "no step of it has reported for 16 min (the last from modelship-deploy-x7k2p-optimize)"
    )
    again = deploy()
    closed = registry.client.get_run(run.run_id)
    assert closed.info.status == "KILLED" and closed.data.tags[RUN_OUTCOME] == "interrupted"
    assert closed.data.tags[RUN_ERROR] == f"interrupted after validated: {said}"
    assert again.run_id != run.run_id
    tags = registry.resolve("far", version=ref.version).tags
    assert tags[TAG_STATE] == "interrupted" and said in tags[TAG_REASON]  # until validate's verdict


def test_a_working_step_renews_the_heartbeat_until_it_ends(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    beats: list[float] = []
    monkeypatch.setattr(DeploymentRun, "beat", lambda self: beats.append(time.monotonic()))
    run = DeploymentRun(Registry().client, "no-such-run")
    with run.beating(every_s=0.1):
        time.sleep(0.45)
    during = len(beats)
    time.sleep(0.3)
    assert during >= 4 and len(beats) == during  # at the start, then every 0.1 s; none after
