"""The rollout stage: the challenger beside the champion behind the gateway, stepped by the
controller until it is promoted (``champion`` moves to it) or aborted (``champion`` untouched).

Demands a passing load-test verdict. With no champion yet there is nothing to compare with:
the version is promoted at once and the verdict says so. The local target runs both Bentos
and ``python -m modelship.gateway`` for the length of the rollout; with ``rollout.load_rate`` the load
generator sends validation rows through the gateway so each step's analysis has traffic.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from modelship.components.rollout import report
from modelship.components.rollout.controller import Controller, PredictionSource, RolloutRegistry
from modelship.components.rollout.decide import Decision
from modelship.components.rollout.state import AnalysisOutcome, Phase, RolloutStatus, StatusStore
from modelship.components.serving.loadgen import Phase as LoadPhase
from modelship.components.serving.loadgen import run as drive
from modelship.components.serving.local import gateway_launch, log_root
from modelship.components.serving.packaged import bodies, champion_package
from modelship.components.serving.server import free_port, package_launch, served
from modelship.components.targets.cluster import CustomObjects, Deployable, load_api
from modelship.components.targets.kubernetes import router_for
from modelship.components.targets.local import GatewayRouter
from modelship.components.targets.prometheus import PrometheusMetrics
from modelship.core.errors import StageError
from modelship.core.events import NO_EVENTS, EventSink
from modelship.core.records import PackageRecord
from modelship.core.tags import TAG_IMAGE
from modelship.core.traffic import Weights
from modelship.core.verdict import Check, ModelState, Verdict
from modelship.policies.schema import Policy
from modelship.registry.client import CHALLENGER, ModelRef, Registry
from modelship.registry.deployments import DeploymentRun

STAGE = "rollout"


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
        with contextlib.suppress(Exception):  # the alias may be gone already
            self.registry.client.delete_registered_model_alias(model, CHALLENGER)


class InferenceLogs:
    """Each version's logged predictions, read from the production inference log."""

    def __init__(self, root: str, model: str) -> None:
        self.root = root.rstrip("/")
        self.model = model

    def predictions(self, version: str, since: float) -> pd.DataFrame | None:
        from modelship.bentos.inference_log import read

        table = read(f"{self.root}/{self.model}/v{version}", after_us=int(since * 1e6))
        if table.num_rows == 0:
            return pd.DataFrame({"prediction": []})
        frame = table.select(["timestamp", "prediction"]).to_pandas()
        stamps = frame["timestamp"].astype("int64") / 1e6
        return frame.loc[stamps >= since, ["prediction"]].reset_index(drop=True)


class NoLogs:
    def predictions(self, version: str, since: float) -> pd.DataFrame | None:
        return None


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


def _promote_at_once(ref: ModelRef, registry: Registry, why: str) -> Verdict:
    registry.promote(ref)
    check = Check(name="rollout", kind="rollout", passed=True, measured="promoted",
                  reason=f"promoted without a canary: {why}")  # fmt: skip
    return Verdict.from_checks(STAGE, [check])


def run(
    ref: ModelRef,
    policy: Policy,
    previous: Verdict,
    packaged: Path,
    *,
    registry: Registry,
    deployment: DeploymentRun | None,
    workdir: Path,
    env: dict[str, str],
    home: Path,
    events: EventSink = NO_EVENTS,
) -> Verdict:
    """Roll ``ref`` out against the champion after a passing load-test verdict."""
    if not previous.passed:
        return Verdict.not_run(STAGE, previous)
    champion = registry.champion(ref.name)
    if champion is None:
        return _promote_at_once(ref, registry, "no champion yet")
    if champion.version == ref.version:
        check = Check(name="rollout", kind="rollout", passed=True, skipped=True,
                      reason=f"v{ref.version} is the champion already")  # fmt: skip
        return Verdict.from_checks(STAGE, [check])
    rollout = policy.rollout
    if rollout.target != "local":
        return _on_kubernetes(ref, champion, policy, registry, deployment, home, events)
    old, why_not = champion_package(registry, ref)
    if old is None:
        raise StageError(
            f"cannot run a canary against the champion: {why_not}",
            hint=f"deploy the champion again (modelship deploy {ref.name} --version "
            f"{champion.version}) so it has a Bento, or move the champion alias by hand",
        )
    t0 = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    record = PackageRecord.load(packaged)
    # production traffic: the servers write the production inference log
    env = {k: v for k, v in env.items() if k != "MODELSHIP_INFERENCE_LOG"}
    logs = log_root(policy, os.environ | env, home)
    env["MODELSHIP_INFERENCE_LOG"] = logs
    policy_hash = hashlib.sha256(policy.model_dump_json().encode()).hexdigest()[:16]
    store = StatusStore(home / "rollouts", ref.name)
    token = secrets.token_urlsafe(24)
    status: RolloutStatus | None = None
    controller: Controller | None = None
    with contextlib.ExitStack() as stack:
        servers = {}
        for variant, what, version in (("champion", old, champion.version),
                                       ("challenger", record.packaged, ref.version)):  # fmt: skip
            events.emit(STAGE, "step", step=f"starting the {variant} v{version}")
            port = free_port()
            servers[variant] = stack.enter_context(
                served(package_launch(what, port, env, None), port,
                       workdir / f"{variant}.log", rollout.timeout_ready_s)
            )  # fmt: skip
        port = free_port()
        sticky = rollout.sticky_header if rollout.sticky else None
        backends = {"champion": (servers["champion"].url, champion.version),
                    "challenger": (servers["challenger"].url, ref.version)}  # fmt: skip
        gateway = stack.enter_context(
            served(gateway_launch(port, token, backends, sticky, env), port,
                   workdir / "gateway.log", 30.0)
        )  # fmt: skip
        router = GatewayRouter(gateway.url, token)
        predictions = (
            InferenceLogs(logs, ref.name) if policy.package.inference_log.enabled else NoLogs()
        )

        def show(status: RolloutStatus, decision: Decision) -> None:
            events.emit(STAGE, "step", step=status.reason)

        controller = Controller(store, router, router, predictions, MlflowRollouts(registry),
                                rollout, on_change=show)  # fmt: skip
        status = controller.begin(ref.name, champion.version, ref.version, policy_hash)
        done = threading.Event()
        if rollout.load_rate:
            body = bodies(policy, ref, record.columns)
            driver = threading.Thread(
                target=drive,
                args=(f"{gateway.url}/predict", body, [LoadPhase(rollout.load_rate, 24 * 3600)]),
                kwargs={"alive": lambda: "rollout over" if done.is_set() else None,
                        "connections": 64},
                daemon=True,
                name="rollout-traffic",
            )  # fmt: skip
            driver.start()
            stack.callback(driver.join, 5)
            stack.callback(done.set)
        try:
            status = controller.run(status)
        except BaseException as e:
            # the servers stop with this step: record the rollout as over, champion untouched
            status = _abandon(store, controller, f"{type(e).__name__}: {e}")
            raise
        finally:
            done.set()
        if status.phase is Phase.PROMOTED:
            # in-flight requests on the old champion finish, then it stops
            time.sleep(rollout.drain_s)
        figures = {"duration_s": time.perf_counter() - t0}
        if controller.abort_ms is not None:
            figures["abort_ms"] = controller.abort_ms
        snapshot = router.snapshot()
    verdict = Verdict.from_checks(
        STAGE, _checks(status), figures=figures, duration_s=time.perf_counter() - t0
    )
    if verdict.passed:  # "promoted v2: every step passed" says more than a count of checks
        verdict = verdict.model_copy(update={"reason": status.reason})
    if deployment is not None:
        deployment.log_verdict(verdict)
        for path in report.write(status, snapshot, workdir):
            deployment.log_file(path, "rollout")
    return verdict


def deployable(registry: Registry, ref: ModelRef) -> Deployable:
    """A version as a cluster serves it: its image (KServe), its artifact's URI (Seldon)."""

    tags = registry.client.get_model_version(ref.name, ref.version).tags
    return Deployable(ref.name, ref.version, image=tags.get(TAG_IMAGE) or None,
                      storage_uri=ref.source, artifact_format="mlflow")  # fmt: skip


def kubernetes_controller(
    policy: Policy,
    champion: Deployable,
    challenger: Deployable,
    store: StatusStore,
    registry: RolloutRegistry,
    api: CustomObjects,
    on_change: Callable[[RolloutStatus, Decision], None] = lambda s, d: None,
) -> Controller:
    """The same controller, driving Seldon Core v2 or KServe: the objects applied at weight 0,
    metrics from Prometheus, predictions from the inference log where it is shared storage."""
    rollout = policy.rollout
    k8s = rollout.kubernetes
    router = router_for(rollout.target, api, k8s.namespace, champion, challenger)
    router.apply(router.manifests(Weights(0)))
    metrics = PrometheusMetrics(k8s.prometheus_url, {"champion": champion.version,
                                                     "challenger": challenger.version},
                                k8s.selector)  # fmt: skip
    uri = policy.package.inference_log.uri
    # pods write their logs where the cluster can reach; a local folder is not that
    shared = bool(uri) and "://" in str(uri) and not str(uri).startswith("file://")
    predictions: PredictionSource = InferenceLogs(str(uri), champion.model) if shared else NoLogs()
    return Controller(store, router, metrics, predictions, registry, rollout,
                      on_change=on_change)  # fmt: skip


def _on_kubernetes(
    ref: ModelRef, champion: ModelRef, policy: Policy, registry: Registry,
    deployment: DeploymentRun | None, home: Path, events: EventSink,
) -> Verdict:  # fmt: skip
    t0 = time.perf_counter()
    store = StatusStore(home / "rollouts", ref.name)
    policy_hash = hashlib.sha256(policy.model_dump_json().encode()).hexdigest()[:16]

    def show(status: RolloutStatus, decision: Decision) -> None:
        events.emit(STAGE, "step", step=status.reason)

    controller = kubernetes_controller(
        policy, deployable(registry, champion), deployable(registry, ref), store,
        MlflowRollouts(registry), load_api(), show,
    )  # fmt: skip
    status = controller.begin(ref.name, champion.version, ref.version, policy_hash)
    try:
        status = controller.run(status)
    except BaseException as e:
        status = _abandon(store, controller, f"{type(e).__name__}: {e}")
        raise
    verdict = Verdict.from_checks(STAGE, _checks(status), duration_s=time.perf_counter() - t0)
    if verdict.passed:
        verdict = verdict.model_copy(update={"reason": status.reason})
    if deployment is not None:
        deployment.log_verdict(verdict)
    return verdict


def _abandon(store: StatusStore, controller: Controller, why: str) -> RolloutStatus:
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
