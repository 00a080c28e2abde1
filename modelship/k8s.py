"""``modelship deploy --target k8s --dry-run``: the Kubernetes objects a rollout would apply."""

from __future__ import annotations

from pathlib import Path

from components.package.stage import TAG_IMAGE
from components.rollout.cluster import Deployable
from components.rollout.kubernetes import dry_run
from components.rollout.router import Weights
from components.rollout.state import plan
from policies.loader import load_policy
from registry.client import ModelRef, Registry


def _deployable(registry: Registry, ref: ModelRef) -> Deployable:
    tags = registry.client.get_model_version(ref.name, ref.version).tags
    # the registered artifact; on a cluster this is the object-store URI MLflow logged it to
    return Deployable(ref.name, ref.version, image=tags.get(TAG_IMAGE) or None,
                      storage_uri=ref.source, artifact_format="mlflow")  # fmt: skip


def print_manifests(
    model: str,
    version: str | None,
    alias: str | None,
    policy_file: Path | None,
    router: str | None,
    namespace: str,
) -> str:
    """The manifests for ``model``'s version beside the champion, at the first step's weights."""
    policy = load_policy(model, policy_file).policy
    target = router or (policy.rollout.target if policy.rollout.target != "local" else "kserve")
    registry = Registry()
    ref = registry.resolve(model, version=version, alias=alias)
    champion = registry.champion(model)
    if champion is not None and champion.version == ref.version:
        champion = None
    first = plan(policy.rollout)[0]
    weights = Weights(first.weight, first.mirror) if champion else Weights(100)
    return dry_run(
        target,
        _deployable(registry, champion) if champion else None,
        _deployable(registry, ref),
        weights,
        namespace,
    )
