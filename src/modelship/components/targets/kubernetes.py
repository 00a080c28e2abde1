"""The Kubernetes rollout targets, picked by name: manifests for a dry run, routers for the
controller.

A policy's ``rollout.target`` names the target (``seldon`` or ``kserve``); this module maps
that name to the pure manifest generator and to the :class:`TrafficRouter` that applies and
moves traffic with the kubernetes client. ``modelship deploy --dry-run`` prints
:func:`dry_run`'s YAML, so what would be applied can be read (or ``kubectl apply``-ed) before
anything touches a cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import yaml

from modelship.components.targets.cluster import (
    CustomObjects,
    Deployable,
    KubernetesError,
    Manifest,
    ManifestError,
    load_api,
)
from modelship.components.targets.kserve import KServeRouter, MirrorUnsupported, kserve_manifests
from modelship.components.targets.seldon import SeldonRouter, seldon_manifests
from modelship.core.tags import TAG_IMAGE, TAG_TRITON_DIGEST, TAG_TRITON_URI
from modelship.core.traffic import TrafficRouter, Weights
from modelship.policies.schema import KubernetesTarget, Policy
from modelship.registry.client import ModelRef, Registry

__all__ = [
    "K8S_MANIFESTS",
    "K8S_ROUTERS",
    "CustomObjects",
    "Deployable",
    "KServeRouter",
    "KubernetesError",
    "KubernetesRouter",
    "ManifestError",
    "MirrorUnsupported",
    "SeldonRouter",
    "deployable",
    "dry_run",
    "load_api",
    "manifests_for",
    "router_for",
    "serve_alone",
]


class KubernetesRouter(TrafficRouter, Protocol):
    """A traffic router that can also create the objects it routes between."""

    def manifests(self, weights: Weights) -> list[Manifest]: ...

    def apply(self, manifests: Sequence[Manifest]) -> None:
        """Create each object, or merge-patch it where it exists."""


ManifestGenerator = Callable[[Deployable | None, Deployable, Weights, str], list[Manifest]]
RouterFactory = Callable[[CustomObjects, str, Deployable | None, Deployable], KubernetesRouter]

K8S_MANIFESTS: dict[str, ManifestGenerator] = {
    "seldon": seldon_manifests,
    "kserve": kserve_manifests,
}
K8S_ROUTERS: dict[str, RouterFactory] = {
    "seldon": SeldonRouter,
    "kserve": KServeRouter,
}


def _unknown(target: str) -> ManifestError:
    return ManifestError(
        f"{target!r} is not a Kubernetes rollout target",
        hint=f"set rollout.target to one of {', '.join(K8S_ROUTERS)} "
        "(local serves with the embedded gateway and has no manifests)",
    )


def manifests_for(
    target: str,
    champion: Deployable | None,
    challenger: Deployable,
    weights: Weights,
    namespace: str,
) -> list[Manifest]:
    """The objects ``target`` needs to serve ``challenger`` beside ``champion`` at ``weights``;
    with no champion, the challenger alone at 100%."""
    if target not in K8S_MANIFESTS:
        raise _unknown(target)
    return K8S_MANIFESTS[target](champion, challenger, weights, namespace)


def router_for(
    target: str,
    api: CustomObjects,
    namespace: str,
    champion: Deployable | None,
    challenger: Deployable,
) -> KubernetesRouter:
    if target not in K8S_ROUTERS:
        raise _unknown(target)
    return K8S_ROUTERS[target](api, namespace, champion, challenger)


def dry_run(
    target: str,
    champion: Deployable | None,
    challenger: Deployable,
    weights: Weights,
    namespace: str,
) -> str:
    """The manifests as one multi-document YAML string, in the order they would be applied."""
    manifests = manifests_for(target, champion, challenger, weights, namespace)
    return yaml.safe_dump_all(manifests, sort_keys=False, default_flow_style=False)


def deployable(
    registry: Registry, ref: ModelRef, k8s: KubernetesTarget | None = None
) -> Deployable:
    """A version as a cluster serves it: its image (KServe); for Seldon, the optimized ONNX in
    Triton's layout where the package stage uploaded one, else the MLflow model itself for
    MLServer, from where its files really lie (``models:/m-...``, the version's ``source`` in
    MLflow 3, is no URI a Seldon server can fetch). ``k8s`` (the policy's
    ``rollout.kubernetes``) names the Secrets the serving pods read storage with."""
    k8s = k8s or KubernetesTarget()
    tags = registry.client.get_model_version(ref.name, ref.version).tags
    image = tags.get(TAG_IMAGE) or None
    if tags.get(TAG_TRITON_URI):
        uri, fmt, digest = tags[TAG_TRITON_URI], "onnx", tags.get(TAG_TRITON_DIGEST)
    else:
        try:
            uri = registry.client.get_model_version_download_uri(ref.name, ref.version)
        except Exception:  # MLflow errors alike: the manifest then says it has no storage URI
            uri = ""
        fmt, digest = "mlflow", None
    return Deployable(
        ref.name, ref.version, image=image, storage_uri=uri or None, artifact_format=fmt,
        storage_digest=digest, storage_secret=k8s.storage_secret or None,
        rclone_secret=k8s.rclone_secret or None, deployment_mode=k8s.deployment_mode,
    )  # fmt: skip


def serve_alone(policy: Policy, challenger: Deployable, api: CustomObjects) -> list[str]:
    """``challenger`` alone with all the traffic on Seldon Core v2 or KServe; the objects as
    ``Kind/namespace/name``.

    For a first version (no champion to canary against: it becomes the revision or the
    candidate the next canary splits against), and for a rollback: after a promotion KServe's
    latest revision is the rolled-back version, so the previous champion's image is applied as
    a new revision with no canary split; Seldon's Experiment gets it as its only candidate (its
    Model stays loaded as the rollback target)."""
    k8s = policy.rollout.kubernetes
    router = router_for(policy.rollout.target, api, k8s.namespace, None, challenger)
    manifests = router.manifests(Weights(100))
    router.apply(manifests)
    return [f"{m['kind']}/{k8s.namespace}/{m['metadata']['name']}" for m in manifests]
