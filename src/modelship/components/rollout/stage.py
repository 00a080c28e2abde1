"""The rollout stage: the challenger beside the champion, stepped by the controller until it is
promoted (``champion`` moves to it) or aborted (``champion`` untouched).

Runs after a passing load-test verdict. With no champion yet there is nothing to compare with:
the version is promoted at once and the verdict says so. Every target (the local gateway,
Seldon Core v2, KServe) is opened through one factory (:mod:`.targets`), so the stage has one
path: open the target, run the controller, record what it decided.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from modelship.components.contract import PackagedInputs, Stage, StageContext
from modelship.components.rollout import report
from modelship.components.rollout.controller import Controller, RolloutRegistry
from modelship.components.rollout.decide import Decision
from modelship.components.rollout.state import (
    AnalysisOutcome,
    Phase,
    RolloutStatus,
    RolloutStore,
    rollout_store,
)
from modelship.components.rollout.targets import RolloutPlan, cluster_ports, open_target
from modelship.components.targets.cluster import CustomObjects, Deployable, load_api
from modelship.components.targets.kubernetes import deployable, serve_alone
from modelship.core.tags import TAG_K8S_OBJECTS
from modelship.core.verdict import Check, ModelState, Verdict
from modelship.policies.loader import policy_hash
from modelship.policies.schema import Policy
from modelship.registry.client import CHALLENGER, ModelRef, Registry

NAME = "rollout"


class MlflowRollouts:
    """The registry side of a rollout: aliases and state tags on the model versions."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def started(self, model: str, challenger: str) -> None:
        ref = self.registry.resolve(model, version=challenger)
        self.registry.set_challenger(ref)
        self.registry.set_state(ref, ModelState.CANARY, "canary rollout in progress")

    def promoted(self, model: str, challenger: str) -> None:
        self.registry.promote(self.registry.resolve(model, version=challenger))

    def rolled_back(self, model: str, challenger: str, reason: str) -> None:
        ref = self.registry.resolve(model, version=challenger)
        self.registry.set_state(ref, ModelState.ROLLED_BACK, reason)
        self.registry.audit(model, "canary aborted", challenger, reason=reason)
        with contextlib.suppress(Exception):  # the alias may be gone already
            self.registry.client.delete_registered_model_alias(model, CHALLENGER)


def _checks(status: RolloutStatus) -> list[Check]:
    checks = [
        Check(
            name=f"rollout.step{a.step + 1}.analysis",
            kind="rollout",
            passed=a.outcome in (AnalysisOutcome.SUCCESSFUL, AnalysisOutcome.INCONCLUSIVE),
            measured=str(a.outcome),
            reason=a.reason,
            # one failed measurement within failure_limit is not the rollout's end
            blocking=False,
        )
        for a in status.analyses
    ]
    checks.append(Check(name="rollout", kind="rollout", passed=status.phase is Phase.PROMOTED,
                        measured=str(status.phase), reason=status.reason))  # fmt: skip
    return checks


def _promote_at_once(ref: ModelRef, registry: Registry, policy: Policy, why: str) -> Verdict:
    """The first version: promoted without a canary; on a cluster target its objects are
    applied first with all the traffic (recorded on the version), so the cluster serves it."""
    where = ""
    if policy.rollout.target != "local":
        objects = serve_alone(
            policy, deployable(registry, ref, policy.rollout.kubernetes), load_api()
        )
        registry.set_tag(ref, TAG_K8S_OBJECTS, ", ".join(objects))
        where = f" on {policy.rollout.target} ({', '.join(objects)})"
    registry.promote(ref)
    check = Check(name="rollout", kind="rollout", passed=True, measured="promoted",
                  reason=f"deployed{where} and promoted without a canary: {why}")  # fmt: skip
    return Verdict.from_checks(NAME, [check])


def run(ctx: StageContext, inputs: PackagedInputs) -> Verdict:
    """Roll ``ctx.ref`` out against the champion on the policy's target."""
    ref, registry, policy, events = ctx.ref, ctx.registry, ctx.policy, ctx.events
    champion = registry.champion(ref.name)
    if champion is None:
        return _promote_at_once(ref, registry, policy, "no champion yet")
    if champion.version == ref.version:
        check = Check(name="rollout", kind="rollout", passed=True, skipped=True,
                      reason=f"v{ref.version} is the champion already")  # fmt: skip
        return Verdict.from_checks(NAME, [check])
    home = ctx.settings.home
    plan = RolloutPlan(ref, champion, policy, registry, inputs.packaged, ctx.workdir, ctx.env,
                       home, events)  # fmt: skip
    store = rollout_store(ctx.settings, ref.name)
    t0 = time.perf_counter()

    weights = {"challenger": 0}

    def show(status: RolloutStatus, decision: Decision) -> None:
        events.emit(NAME, "step", step=status.reason)
        if status.weight != weights["challenger"] and not status.phase.is_terminal:
            # every share of live traffic the challenger is given is a change to what serves
            registry.audit(ref.name, "canary weight", ref.version, weight=status.weight,
                           step=status.step + 1, mirror=status.mirror, reason=status.reason)  # fmt: skip
            weights["challenger"] = status.weight

    # one controller per rollout: a second deploy of the model (another pod) is refused here
    store.acquire()
    try:
        status, final, controller = _drive(plan, store, ref, champion, policy, show)
    finally:
        store.release()
    figures = {"duration_s": time.perf_counter() - t0}
    if controller.abort_ms is not None:
        figures["abort_ms"] = controller.abort_ms
    verdict = Verdict.from_checks(NAME, _checks(status), figures=figures)
    if verdict.passed:  # "promoted v2: every step passed" says more than a count of checks
        verdict = verdict.model_copy(update={"reason": status.reason})
    if ctx.deployment is not None:
        for path in report.write(status, final, ctx.workdir):
            ctx.deployment.log_file(path, "rollout")
    return verdict


def _drive(
    plan: RolloutPlan, store: RolloutStore, ref: ModelRef, champion: ModelRef, policy: Policy,
    show: Callable[[RolloutStatus, Decision], None],
) -> tuple[RolloutStatus, dict[str, Any], Controller]:  # fmt: skip
    """Open the target, run the controller to the end; the status, the target's final view."""
    with open_target(plan) as ports:
        controller = Controller(store, ports.router, ports.metrics, ports.predictions,
                                MlflowRollouts(plan.registry), policy.rollout, on_change=show)  # fmt: skip
        # the same hash the deployment run records (modelship.policies.loader)
        status = controller.begin(ref.name, champion.version, ref.version, policy_hash(policy))
        try:
            status = controller.run(status)
        except BaseException as e:
            # the target closes with this step: record the rollout as over, champion untouched
            why = (
                (str(e) or "interrupted")
                if isinstance(e, KeyboardInterrupt)
                else f"{type(e).__name__}: {e}"
            )
            _abandon(store, controller, why)
            raise
        if status.phase is Phase.PROMOTED:
            # in-flight requests on the old champion finish, then it stops
            time.sleep(ports.drain_s)
        return status, ports.final(), controller


def kubernetes_controller(
    policy: Policy,
    champion: Deployable,
    challenger: Deployable,
    store: RolloutStore,
    registry: RolloutRegistry,
    api: CustomObjects,
    on_change: Callable[[RolloutStatus, Decision], None] = lambda s, d: None,
) -> Controller:
    """The controller on Seldon Core v2 or KServe, as the stage builds it (for tests and tools)."""
    ports = cluster_ports(policy, champion, challenger, api)
    return Controller(store, ports.router, ports.metrics, ports.predictions, registry,
                      policy.rollout, on_change=on_change)  # fmt: skip


def _abandon(store: RolloutStore, controller: Controller, why: str) -> RolloutStatus:
    status = store.load()
    assert status is not None
    if status.phase.is_terminal:
        return status
    reason = f"aborted v{status.challenger}: the rollout stopped ({why})"
    now = time.time()
    status = status.model_copy(update={"phase": Phase.ABORTED, "weight": 0, "reason": reason,
                                       "events": [*status.events, f"{now:.3f} {reason}"]})  # fmt: skip
    store.save(status)
    with contextlib.suppress(Exception):
        controller.registry.rolled_back(status.model, status.challenger, reason)
    return status


#: the rollout moves the version's state itself: canary, then promoted or rolled back
STAGE: Stage[PackagedInputs] = Stage(NAME, None, run)
