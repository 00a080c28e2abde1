"""``modelship deploy --target k8s --dry-run``: the RBAC the pipeline needs, then the Kubernetes
objects a rollout would apply."""

from __future__ import annotations

from pathlib import Path

import yaml

from modelship.components.rollout.state import plan
from modelship.components.targets.kubernetes import deployable, dry_run
from modelship.components.targets.rbac import rbac_manifests
from modelship.core.traffic import Weights
from modelship.policies.loader import load_policy
from modelship.registry.client import Registry


def print_manifests(
    model: str,
    version: str | None,
    alias: str | None,
    policy_file: Path | None,
    router: str | None,
    namespace: str,
    *,
    policy_dir: Path | None = None,
) -> str:
    """The manifests for ``model``'s version beside the champion, at the first step's weights."""
    policy = load_policy(model, policy_file, policy_dir=policy_dir).policy
    target = router or (policy.rollout.target if policy.rollout.target != "local" else "kserve")
    registry = Registry()
    ref = registry.resolve(model, version=version, alias=alias)
    champion = registry.champion(model)
    if champion is not None and champion.version == ref.version:
        champion = None
    first = plan(policy.rollout)[0]
    weights = Weights(first.weight, first.mirror) if champion else Weights(100)
    k8s = policy.rollout.kubernetes
    secrets = tuple(n for n in (k8s.storage_secret, k8s.rclone_secret) if n)
    rbac = yaml.safe_dump_all(rbac_manifests(namespace, secrets=secrets), sort_keys=False)
    return (
        rbac
        + "---\n"
        + dry_run(
            target,
            deployable(registry, champion, policy.rollout.kubernetes) if champion else None,
            deployable(registry, ref, policy.rollout.kubernetes),
            weights,
            namespace,
        )
    )
