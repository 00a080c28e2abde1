"""The rollout's state machine tick by tick (injected clock, fakes), and its analysis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from modelship.components.rollout.analysis import judge, prediction_drift
from modelship.components.rollout.controller import Controller, RolloutInProgress
from modelship.components.rollout.decide import Action, Observations, decide
from modelship.components.rollout.state import (
    AnalysisOutcome,
    AnalysisRecord,
    Phase,
    RolloutStatus,
    StatusStore,
    plan,
)
from modelship.components.targets.local import RouterError
from modelship.core.histogram import LatencyHistogram
from modelship.core.traffic import BadWeights, Weights
from modelship.gateway.stats import Traffic
from modelship.policies.schema import Analysis, CanaryStep, Rollout
from tests.servers.controller import NoLogs

POLICY = Rollout(
    steps=[
        CanaryStep(weight=10, pause_s=30),
        CanaryStep(weight=50, pause_s=30),
        CanaryStep(weight=100, pause_s=0),
    ],
    failure_limit=1,
    consecutive_error_limit=2,
)


def new_status(**changes: Any) -> RolloutStatus:
    return RolloutStatus(model="m", champion="1", challenger="2", strategy="canary",
                         policy_hash="h", started_at=0.0, updated_at=0.0).model_copy(
        update=changes)  # fmt: skip


def record(outcome: AnalysisOutcome, step: int = 0) -> AnalysisRecord:
    return AnalysisRecord(step=step, outcome=outcome, reason=str(outcome), at=0.0)


class Ticker:
    """Drives ``decide`` the way the controller does, with a clock that only moves when told."""

    def __init__(self, policy: Rollout = POLICY, **status: Any) -> None:
        self.policy = policy
        self.steps = plan(policy)
        self.status = new_status(**status)
        self.now = 0.0
        self.actions: list[Action] = []

    def tick(self, *, after: float = 0.0, analysis: AnalysisOutcome | None = None,
             **observed: Any) -> Action:  # fmt: skip
        self.now += after
        d = decide(self.status, Observations(**observed), self.steps, self.policy, self.now)
        if d.action is Action.ANALYZE and analysis is not None:
            obs = Observations(analysis=record(analysis, self.status.step))
            d = decide(d.status, obs, self.steps, self.policy, self.now)
        self.status = d.status
        self.actions.append(d.action)
        return d.action


# -- decide ------------------------------------------------------------------------------------


def test_a_healthy_canary_walks_every_step_then_promotes() -> None:
    t = Ticker()
    assert t.tick() is Action.SET_STEP and t.status.weight == 10
    assert t.tick(after=10) is Action.WAIT
    assert t.tick(after=25) is Action.ANALYZE  # pause over, no result yet
    assert t.tick(analysis=AnalysisOutcome.SUCCESSFUL) is Action.SET_STEP
    assert (t.status.step, t.status.weight) == (1, 50)
    assert t.tick(after=31, analysis=AnalysisOutcome.SUCCESSFUL) is Action.SET_STEP
    assert t.status.weight == 100
    assert t.tick(analysis=AnalysisOutcome.SUCCESSFUL) is Action.PROMOTE
    assert t.status.phase is Phase.PROMOTED and t.status.phase.is_terminal
    assert t.tick() is Action.DONE
    assert len(t.status.analyses) == 3


def test_failures_beyond_the_limit_abort_and_each_failure_measures_again() -> None:
    t = Ticker()
    t.tick()
    assert t.tick(after=30, analysis=AnalysisOutcome.FAILED) is Action.SET_STEP  # 1 <= limit
    assert (t.status.step, t.status.failed, t.status.step_started_at) == (0, 1, 30)
    assert t.tick(after=30, analysis=AnalysisOutcome.FAILED) is Action.ABORT
    assert t.status.phase is Phase.ABORTED and t.status.weight == 0
    assert "analysis failed" in t.status.reason


def test_errors_are_not_failures_and_reset_on_success() -> None:
    t = Ticker()
    t.tick()
    assert t.tick(after=30, analysis=AnalysisOutcome.ERROR) is Action.WAIT
    assert (t.status.failed, t.status.consecutive_errors) == (0, 1)
    assert t.tick(after=2, analysis=AnalysisOutcome.SUCCESSFUL) is Action.SET_STEP
    assert t.status.consecutive_errors == 0
    t.tick(after=30, analysis=AnalysisOutcome.ERROR)
    assert t.tick(after=2, analysis=AnalysisOutcome.ERROR) is Action.ABORT
    assert "could not run 2 times in a row" in t.status.reason


def test_no_traffic_is_inconclusive_and_waits_for_a_person() -> None:
    t = Ticker()
    t.tick()
    assert t.tick(after=30, analysis=AnalysisOutcome.INCONCLUSIVE) is Action.WAIT
    assert t.status.phase is Phase.PAUSED and "inconclusive" in t.status.reason
    assert "modelship rollout promote m" in t.status.reason and "600 s" in t.status.reason
    assert "since 00:00:30 UTC" in t.status.reason and "aborts at 00:10:30 UTC" in t.status.reason
    assert t.tick(after=599) is Action.WAIT  # within rollout.progress_deadline_s
    assert t.tick(command="promote") is Action.SET_STEP
    assert (t.status.step, t.status.phase, t.status.paused_at) == (1, Phase.PROGRESSING, None)


def test_a_rollout_waiting_past_its_progress_deadline_aborts_with_the_reason() -> None:
    t = Ticker(POLICY.model_copy(update={"progress_deadline_s": 120.0}))
    t.tick()
    assert t.tick(after=30, analysis=AnalysisOutcome.INCONCLUSIVE) is Action.WAIT
    paused_at = t.status.paused_at
    assert paused_at == 30.0
    assert t.tick(after=119) is Action.WAIT
    assert t.tick(after=1) is Action.ABORT
    assert t.status.phase is Phase.ABORTED and t.status.weight == 0
    assert "rollout.progress_deadline_s (120 s)" in t.status.reason
    assert "inconclusive at step 1" in t.status.reason


def test_without_a_progress_deadline_a_pause_waits_for_a_person() -> None:
    t = Ticker(POLICY.model_copy(update={"progress_deadline_s": None}))
    t.tick()
    t.tick(after=30, analysis=AnalysisOutcome.INCONCLUSIVE)
    assert t.tick(after=3600) is Action.WAIT
    assert t.tick(command="promote") is Action.SET_STEP


def test_a_step_without_a_pause_length_waits_for_promote() -> None:
    t = Ticker(Rollout(steps=[CanaryStep(weight=20, pause_s=None), CanaryStep(weight=100)]))
    t.tick()
    assert t.status.phase is Phase.PAUSED and t.status.paused_at == 0.0
    assert t.tick(after=599) is Action.WAIT
    assert t.tick(command="promote") is Action.SET_STEP and t.status.weight == 100


def test_abort_by_hand_ejection_and_promote_full() -> None:
    t = Ticker()
    t.tick()
    assert t.tick(command="abort") is Action.ABORT and "by hand" in t.status.reason
    t = Ticker()
    t.tick()
    assert t.tick(challenger_healthy=False) is Action.ABORT and "ejected" in t.status.reason
    t = Ticker()
    t.tick()
    assert t.tick(command="promote_full") is Action.PROMOTE


def test_blue_green_mirrors_first_then_switches_at_once() -> None:
    steps = plan(Rollout(strategy="blue_green"))
    assert [(s.weight, s.mirror, s.analysis) for s in steps] == [(0, 1.0, True), (100, 0.0, False)]
    t = Ticker(Rollout(strategy="blue_green"))
    t.tick()
    assert (t.status.weight, t.status.mirror) == (0, 1.0)
    assert t.tick(after=60, analysis=AnalysisOutcome.SUCCESSFUL) is Action.SET_STEP
    assert t.status.weight == 100
    assert t.tick() is Action.PROMOTE


def test_weights_are_range_checked() -> None:
    for bad in ({"challenger": 101}, {"challenger": -5}, {"mirror": 1.5}):
        with pytest.raises(BadWeights, match="must be"):
            Weights(**bad)
    assert Weights(30).champion == 70


# -- analysis ----------------------------------------------------------------------------------


def traffic(requests: int, errors: int = 0, ms: float = 2.0) -> Traffic:
    hist = LatencyHistogram()
    for _ in range(requests):
        hist.record(ms / 1e3)
    return Traffic(requests, errors, hist)


def test_judge_holds_the_challenger_to_the_champion() -> None:
    rules = Analysis(min_requests=50, max_error_rate_increase=0.01, max_p99_ratio=1.5,
                     p99_floor_ms=5, latency_check="p99")  # fmt: skip
    ok = judge(0, traffic(500), traffic(100), None, rules, 0.0)
    assert ok.outcome is AnalysisOutcome.SUCCESSFUL
    assert (
        judge(0, traffic(500), traffic(20), None, rules, 0.0).outcome
        is AnalysisOutcome.INCONCLUSIVE
    )
    errors = judge(0, traffic(500), traffic(100, errors=5), None, rules, 0.0)
    assert errors.outcome is AnalysisOutcome.FAILED and "error rate 5.00%" in errors.reason
    slow = judge(0, traffic(500, ms=2), traffic(100, ms=40), None, rules, 0.0)
    assert slow.outcome is AnalysisOutcome.FAILED and "p99" in slow.reason
    # within the floor: 2 ms against 6 ms is noise, not a regression
    assert judge(0, traffic(500, ms=2), traffic(100, ms=6), None, rules, 0.0).outcome is (
        AnalysisOutcome.SUCCESSFUL
    )


def test_prediction_drift_between_versions_uses_evidently() -> None:
    same = pd.DataFrame({"prediction": [0, 1] * 200})
    flipped = pd.DataFrame({"prediction": [1] * 380 + [0] * 20})
    calm = prediction_drift(same, same.sample(frac=1.0, random_state=1))
    assert calm.share == 0.0 and "prediction" in calm.columns
    drifted = prediction_drift(same, flipped)
    assert drifted.share == 1.0
    rules = Analysis(min_requests=10, prediction_check="distribution")
    verdict = judge(0, traffic(400), traffic(400), drifted, rules, 0.0)
    assert verdict.outcome is AnalysisOutcome.FAILED and "drifted" in verdict.reason


# -- the controller with fakes -----------------------------------------------------------------


class FakeGateway:
    def __init__(self) -> None:
        self.weights = Weights()
        self.healthy = True
        self.promoted = False
        self.instance = "a"
        #: requests each variant gets between two snapshots (traffic flowing)
        self.flow = 0
        self.requests = 0

    def get_weights(self) -> Weights:
        return self.weights

    def set_weights(self, weights: Weights) -> None:
        self.weights = weights

    def promote(self) -> None:
        self.promoted = True

    def snapshot(self) -> dict[str, Any]:
        self.requests += self.flow
        n = self.requests
        hist = LatencyHistogram()
        hist.record(0.002)
        live = {"outcomes": {"ok": n}, "latency": {k: v * n for k, v in hist.sparse().items()}}
        return {"champion/live": live, "challenger/live": live, "instance": self.instance}

    def challenger_healthy(self) -> bool:
        return self.healthy


class Book:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def started(self, model: str, challenger: str) -> None:
        self.calls.append(("started", challenger))

    def promoted(self, model: str, challenger: str) -> None:
        self.calls.append(("promoted", challenger))

    def rolled_back(self, model: str, challenger: str, reason: str) -> None:
        self.calls.append(("rolled_back", challenger, reason))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.now > 5000:
            raise AssertionError("the rollout never ended")


def controller(tmp_path: Path, gw: FakeGateway, book: Book, clock: Clock) -> Controller:
    # the controller's mechanics, no paired answers (the fake gateway pairs nothing)
    policy = Rollout(steps=[CanaryStep(weight=20, pause_s=10), CanaryStep(weight=100, pause_s=0)],
                     mirror_share=0.0,
                     analysis=Analysis(min_requests=10, prediction_check="distribution"))  # fmt: skip
    return Controller(StatusStore(tmp_path, "m"), gw, gw, NoLogs(), book, policy,
                      clock=clock, sleep=clock.sleep)  # fmt: skip


def test_a_killed_controller_resumes_where_it_was(tmp_path: Path) -> None:
    gw, book, clock = FakeGateway(), Book(), Clock()
    first = controller(tmp_path, gw, book, clock)
    status = first.begin("m", "1", "2", "h")
    status = first.tick(status).status  # step 1 applied at t=1000
    clock.now += 4
    status = first.tick(status).status
    del first  # killed between ticks: only the files remain
    gw.weights = Weights()  # whatever the router holds, the saved weights are put back
    second = controller(tmp_path, gw, book, clock)
    resumed = second.begin("m", "1", "2", "h")
    assert (resumed.step, resumed.step_started_at) == (0, 1000.0)  # the pause is not restarted
    assert gw.weights == Weights(20)
    gw.flow = 500
    final = second.run(resumed)
    assert final.phase is Phase.PROMOTED and gw.promoted
    assert clock.now == pytest.approx(1010.0, abs=1.0)  # 10 s of pause in all, not 14
    assert book.calls == [("started", "2"), ("promoted", "2")]
    assert any("resumed" in e for e in final.events)


def test_a_new_gateway_means_the_step_is_measured_again(tmp_path: Path) -> None:
    gw, book, clock = FakeGateway(), Book(), Clock()
    first = controller(tmp_path, gw, book, clock)
    first.tick(first.begin("m", "1", "2", "h"))
    gw.instance = "b"  # the gateway was restarted: its counts began again
    resumed = controller(tmp_path, gw, book, clock).begin("m", "1", "2", "h")
    assert resumed.step_started_at is None


def test_an_aborted_rollout_leaves_the_champion_and_records_why(tmp_path: Path) -> None:
    gw, book, clock = FakeGateway(), Book(), Clock()
    c = controller(tmp_path, gw, book, clock)
    status = c.tick(c.begin("m", "1", "2", "h")).status
    gw.healthy = False
    final = c.run(status)
    assert final.phase is Phase.ABORTED and gw.weights == Weights(0)
    assert book.calls[-1][:2] == ("rolled_back", "2") and "ejected" in book.calls[-1][2]
    assert c.abort_ms is not None


def test_one_rollout_per_model_at_a_time(tmp_path: Path) -> None:
    gw, book, clock = FakeGateway(), Book(), Clock()
    c = controller(tmp_path, gw, book, clock)
    c.begin("m", "1", "2", "h")
    with pytest.raises(RolloutInProgress, match="rollout abort"):
        c.begin("m", "1", "3", "h")


def test_commands_from_another_process_reach_the_controller(tmp_path: Path) -> None:
    gw, book, clock = FakeGateway(), Book(), Clock()
    c = controller(tmp_path, gw, book, clock)
    status = c.tick(c.begin("m", "1", "2", "h")).status
    StatusStore(tmp_path, "m").send("abort")
    assert c.tick(status).action is Action.ABORT
    assert StatusStore(tmp_path, "m").load().phase is Phase.ABORTED  # type: ignore[union-attr]


class DeadMetrics(FakeGateway):
    """A router whose metrics cannot be read at all (Prometheus down)."""

    def snapshot(self) -> dict[str, Any]:
        raise RouterError("could not query Prometheus at http://prometheus:9090: refused")


def test_unreadable_metrics_are_analysis_errors_that_abort_not_a_crash(tmp_path: Path) -> None:
    gw, book, clock = DeadMetrics(), Book(), Clock()
    c = controller(tmp_path, gw, book, clock)
    final = c.run(c.begin("m", "1", "2", "h"))
    assert final.phase is Phase.ABORTED and gw.weights == Weights(0)
    errors = [a for a in final.analyses if a.outcome is AnalysisOutcome.ERROR]
    assert len(errors) == c.policy.consecutive_error_limit
    assert "could not query Prometheus" in errors[0].reason
    assert book.calls[-1][:2] == ("rolled_back", "2")
