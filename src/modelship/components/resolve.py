"""The first step: resolve the version, load the policy, take the digest, open the record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelship.core.errors import DigestMismatch, InputError
from modelship.core.events import NO_EVENTS, EventSink
from modelship.core.settings import Settings
from modelship.core.tags import TAG_RUN, TAG_STATE
from modelship.core.verdict import ModelState
from modelship.policies.loader import load_policy
from modelship.policies.schema import cluster_log_problem
from modelship.registry.client import ModelRef, Registry
from modelship.registry.deployments import STALE_S, DeploymentRun, LocalOwner, Silence


def _close_interrupted(registry: Registry, ref: ModelRef) -> None:
    """A deploy of ``ref`` still running here is refused; one that was killed is closed (its
    run and the version's state say so) before this one starts over."""
    previous = ref.tags.get(TAG_RUN)
    if not previous:
        return
    run = DeploymentRun(registry.client, previous)
    after = f"interrupted after {ref.tags.get(TAG_STATE) or 'registration'}"
    found = run.carrier()
    if found is None:
        return
    if isinstance(found, LocalOwner) and found.over is None:
        raise InputError(
            f"{ref} is being deployed now by process {found.pid} (MLflow run {previous})",
            hint=f"wait for it to end, or stop it (kill {found.pid}) and deploy again",
        )
    if isinstance(found, Silence) and found.over is None:
        raise InputError(
            f"{ref} is being deployed now on {found.host} (MLflow run {previous}; its last "
            f"step reported {found.seconds:.0f} s ago)",
            hint="wait for that deployment to end (its Kubeflow Pipelines run); if it is gone, "
            f"it counts as interrupted after {STALE_S / 60:.0f} min without a report, and "
            "this deploy may then run",
        )
    reason = f"{after}: {found.over}"
    run.fail(reason, outcome="interrupted", status="KILLED")
    registry.set_state(ref, ModelState.INTERRUPTED, reason)


@dataclass(frozen=True)
class Resolved:
    ref: ModelRef
    digest: str
    policy_json: str
    policy_hash: str
    run_id: str


def run(
    model: str,
    version: str | None,
    alias: str | None,
    policy_file: Path | None,
    *,
    policy_text: str | None = None,
    kfp_run: str = "",
    settings: Settings,
    registry: Registry,
    dest: Path,
    events: EventSink = NO_EVENTS,
) -> Resolved:
    # a bad policy fails before anything is touched
    loaded = load_policy(model, policy_file, policy_dir=settings.policies, text=policy_text)
    if settings.pod_secret and loaded.policy.rollout.target == "local":
        raise InputError(
            "rollout.target is local, but this deployment runs in a Kubeflow Pipelines pod: a "
            "local canary would wait for traffic on the pod's own 127.0.0.1 that never comes",
            hint="set rollout.target: seldon or kserve (and rollout.kubernetes) in the policy, "
            "or run `modelship deploy` on the machine that serves",
        )
    if settings.pod_secret and (problem := cluster_log_problem(loaded.policy)) is not None:
        raise InputError(problem, hint="edit the policy the run was given (policy_yaml)")
    ref = registry.resolve(model, version=version, alias=alias)
    _close_interrupted(registry, ref)
    events.emit("resolve", "step", step=f"download {ref}")
    try:
        _, digest = registry.checked_download(ref, dest)
    except DigestMismatch as e:
        registry.set_state(ref, ModelState.REJECTED, e.message)
        raise
    policy_json = loaded.policy.model_dump_json(by_alias=True)
    run = DeploymentRun.open(
        registry.client,
        settings,
        ref,
        digest=digest,
        policy_hash=loaded.digest,
        policy_json=policy_json,
        kfp_run=kfp_run,
    )
    registry.set_tag(ref, TAG_RUN, run.run_id)
    registry.audit(ref.name, "deployment started", ref.version, policy_hash=loaded.digest,
                   mlflow_run=run.run_id, kfp_run=kfp_run or None)  # fmt: skip
    events.emit(
        "resolve",
        "step",
        step=f"{ref} digest {digest[:19]}",
        run_id=run.run_id,
        version=ref.version,
        digest=digest,
    )
    return Resolved(ref, digest, policy_json, loaded.digest, run.run_id)
