"""The rollout controller: observe, :func:`~components.rollout.decide.decide`, apply, save.

Each tick reads the saved status, the challenger's health and any command a person sent,
asks ``decide`` for one action and applies it through small ports (the traffic router, the
metric source, the inference logs, the registry), then saves the new status. A controller
killed at any point and started again picks up from the saved status: every action is safe to
apply twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import pandas as pd

from modelship.components.rollout import analysis
from modelship.components.rollout.decide import Action, Decision, Observations, decide
from modelship.components.rollout.state import (
    AnalysisOutcome,
    AnalysisRecord,
    RolloutStatus,
    RolloutStore,
    plan,
)
from modelship.core.errors import InputError, ModelshipError
from modelship.core.traffic import TrafficRouter, Weights
from modelship.gateway.stats import Mode, paired_between, traffic_between
from modelship.policies.schema import Rollout


class MetricSource(Protocol):
    def snapshot(self) -> dict[str, Any]: ...

    def challenger_healthy(self) -> bool: ...


class PredictionSource(Protocol):
    def predictions(self, version: str, since: float) -> pd.DataFrame | None:
        """The version's logged predictions since ``since`` (epoch s); None: not logged."""


class RolloutRegistry(Protocol):
    def started(self, model: str, challenger: str) -> None: ...

    def promoted(self, model: str, challenger: str) -> None: ...

    def rolled_back(self, model: str, challenger: str, reason: str) -> None: ...


class RolloutInProgress(InputError):
    """Another version of the model is in the middle of a rollout."""


class Controller:
    def __init__(
        self,
        store: RolloutStore,
        router: TrafficRouter,
        metrics: MetricSource,
        predictions: PredictionSource,
        registry: RolloutRegistry,
        policy: Rollout,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        on_change: Callable[[RolloutStatus, Decision], None] = lambda s, d: None,
    ) -> None:
        self.store = store
        self.router = router
        self.metrics = metrics
        self.predictions = predictions
        self.registry = registry
        self.policy = policy
        self.steps = plan(policy)
        self.clock = clock
        self.sleep = sleep
        self.on_change = on_change
        #: milliseconds from the abort decision to the router's acknowledgement of weight 0
        self.abort_ms: float | None = None

    def begin(
        self, model: str, champion: str | None, challenger: str, policy_hash: str
    ) -> RolloutStatus:
        """The rollout of ``challenger``: resumed if one is saved and not over, else a new one."""
        status = self.store.load()
        if status is not None and not status.phase.is_terminal:
            if status.challenger != challenger:
                raise RolloutInProgress(
                    f"v{status.challenger} of {model} is in a rollout ({status.phase}, step "
                    f"{status.step + 1})",
                    hint=f"wait for it, or `modelship rollout abort {model}`",
                )
            now = self.clock()
            baseline = self.store.load_baseline()
            changes: dict[str, Any] = {"events": [*status.events, f"{now:.3f} resumed"]}
            if baseline is None or baseline.get("instance") != self._instance():
                # a new gateway: its counts start at zero, so the step is measured again
                changes["step_started_at"] = None
            status = status.model_copy(update=changes)
            self.router.set_weights(Weights(status.weight, status.mirror))
            self.store.save(status)
            return status
        now = self.clock()
        status = RolloutStatus(
            model=model, champion=champion, challenger=challenger, strategy=self.policy.strategy,
            policy_hash=policy_hash, started_at=now, updated_at=now,
            events=[f"{now:.3f} rollout of v{challenger} against "
                    f"{'v' + champion if champion else 'no champion'} started"],
        )  # fmt: skip
        self.registry.started(model, challenger)
        self.store.save(status)
        return status

    def _instance(self) -> str | None:
        try:
            return self.metrics.snapshot().get("instance")
        except ModelshipError:
            return None

    def tick(self, status: RolloutStatus) -> Decision:
        """One observe-decide-apply round; the new status is saved before it returns."""
        try:
            healthy = self.metrics.challenger_healthy()
        except ModelshipError:
            healthy = True  # the router is unreachable: the analysis will say so as an error
        observations = Observations(challenger_healthy=healthy, command=self.store.take_command())
        decision = decide(status, observations, self.steps, self.policy, self.clock())
        if decision.action is Action.ANALYZE:
            record = self.analyze(decision.status)
            observations = replace(observations, command=None, analysis=record)
            decision = decide(decision.status, observations, self.steps, self.policy, self.clock())
        self.apply(decision)
        self.store.save(decision.status)
        if decision.status != status:
            self.on_change(decision.status, decision)
        return decision

    def run(self, status: RolloutStatus) -> RolloutStatus:
        """Tick until the rollout is promoted or aborted."""
        while True:
            decision = self.tick(status)
            status = decision.status
            if decision.action in (Action.PROMOTE, Action.ABORT, Action.DONE):
                return status
            if decision.action is Action.WAIT:
                self.sleep(min(max(decision.wait_s, 0.01), self.policy.tick_s))

    def apply(self, decision: Decision) -> None:
        status = decision.status
        if decision.action is Action.ABORT:
            started = time.perf_counter()
            self.router.set_weights(Weights(0, 0.0))  # first: traffic off the challenger
            self.abort_ms = (time.perf_counter() - started) * 1e3
            self.registry.rolled_back(status.model, status.challenger, status.reason)
        elif decision.action is Action.SET_STEP:
            self.router.set_weights(Weights(status.weight, status.mirror))
            try:
                snapshot = self.metrics.snapshot()
            except ModelshipError as e:
                # unreadable metrics (Prometheus down, say) are this step's analysis error,
                # counted against consecutive_error_limit, never a crash of the controller
                self.store.save_baseline({"at": status.step_started_at, "stats": None,
                                          "error": str(e).splitlines()[0]})  # fmt: skip
                return
            self.store.save_baseline({"at": status.step_started_at, "stats": snapshot,
                                      "instance": snapshot.get("instance")})  # fmt: skip
        elif decision.action is Action.PROMOTE:
            self.router.set_weights(Weights(100, 0.0))
            self.router.promote()
            self.registry.promoted(status.model, status.challenger)

    def analyze(self, status: RolloutStatus) -> AnalysisRecord:
        now = self.clock()

        def error(reason: str) -> AnalysisRecord:
            return AnalysisRecord(
                step=status.step, outcome=AnalysisOutcome.ERROR, reason=reason, at=now
            )

        baseline = self.store.load_baseline()
        if baseline is None or baseline.get("stats") is None:
            why = f": {baseline['error']}" if baseline and baseline.get("error") else ""
            return error(f"no metrics were taken at the start of the step{why}")
        try:
            after = self.metrics.snapshot()
        except ModelshipError as e:
            return error(f"could not read the gateway's metrics: {e}")
        before = baseline["stats"]
        mirrored = status.weight == 0 and status.mirror > 0
        champion = traffic_between(before, after, "champion")
        challenger = traffic_between(
            before, after, "challenger", Mode.MIRROR if mirrored else Mode.LIVE
        )
        rules = self.policy.analysis
        # at 100% the champion answers nothing to pair with; earlier steps judged the pairs
        paired = paired_between(before, after) if status.weight < 100 else None
        if rules.prediction_check != "distribution":
            return analysis.judge(status.step, champion, challenger, None, rules, now,
                                  paired=paired)  # fmt: skip
        since = float(baseline["at"])
        try:
            theirs = self.predictions.predictions(status.challenger, since)
            ours = self.predictions.predictions(status.champion, since) if status.champion else None
            if ours is not None and len(ours) < self.policy.analysis.min_requests:
                # at high weights the champion sees little traffic: the whole rollout's then
                ours = self.predictions.predictions(str(status.champion), status.started_at)
        except (OSError, ValueError, KeyError) as e:
            return error(f"could not read the inference logs: {e}")
        drift, skipped = None, ""
        if theirs is None or ours is None:
            skipped = "no inference log (package.inference_log.enabled is false)"
        elif challenger.requests >= self.policy.analysis.min_requests and theirs.empty:
            return error("the challenger's inference log has no rows for this step yet")
        elif len(theirs) and len(ours):
            try:
                drift = analysis.prediction_drift(
                    ours, theirs, rules.prediction_drift_method, rules.prediction_drift_threshold
                )
            except Exception as e:  # Evidently raising is a failed analysis run, not drift
                return error(f"Evidently's drift test failed to run: {e}")
        else:
            skipped = "no predictions logged for one of the versions"
        return analysis.judge(
            status.step, champion, challenger, drift, rules, now, drift_skipped=skipped
        )
