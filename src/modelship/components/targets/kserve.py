"""KServe as a traffic router: one ``InferenceService`` per model, its predictor the packaged
Bento image, the canary split by ``canaryTrafficPercent``.

KServe's canary is revision-based: the latest revision of the predictor spec is the canary and
gets ``canaryTrafficPercent`` of requests, the previous rolled-out revision keeps the rest. So
the manifest names only the challenger's image; the champion is whatever ran before it. Abort
is a percent of 0, promotion removes the percent so the latest revision takes everything.
Revisions exist only in KServe's Knative mode, which the manifest asks for explicitly, and
KServe cannot mirror traffic: a mirror share is refused, not silently dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelship.components.targets.cluster import (
    ANNOTATION_PREFIX,
    NAME_MAX,
    ClusterRouter,
    CustomObjects,
    CustomResource,
    Deployable,
    KubernetesError,
    Manifest,
    ManifestError,
    check_pair,
    dig,
    k8s_name,
    metadata,
    with_nulls,
)
from modelship.core.traffic import Weights

INFERENCE_SERVICE = CustomResource(
    "serving.kserve.io", "v1beta1", "InferenceService", "inferenceservices"
)

#: the Bento image's HTTP port and health routes (bentos/)
PORT = 3000
READY_PATH = "/readyz"
LIVE_PATH = "/livez"

#: Knative mode keeps revisions, which the canary split needs (KServe's canary page: "only
#: supported in serverless deployment mode"; canaryTrafficPercent is read only by its Knative
#: reconciler). KServe 0.16 renamed "Serverless" to "Knative" (the old name stays an alias);
#: the policy's rollout.kubernetes.deployment_mode picks the name the cluster's KServe knows.
DEPLOYMENT_MODES = ("Knative", "Serverless")

#: the predictor's object-store keys, from the Secret the policy names: environment variable
#: -> the Secret's key. pyarrow (the Bento's inference log) reads AWS_ENDPOINT_URL.
STORAGE_ENV = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL",
}

#: KServe's scraping of a custom predictor's metrics (its "Prometheus Metrics" page, 0.14 and
#: later): ``serving.kserve.io/enable-prometheus-scraping`` on the InferenceService, with the
#: port and path overridden by ``prometheus.kserve.io/port|path``. KServe then annotates the
#: pods for Prometheus; Prometheus itself must be configured to scrape annotated pods (or a
#: PodMonitor), as that page says. The Bento serves ``modelship_*`` series on /metrics.
SCRAPE_ANNOTATIONS = {
    "serving.kserve.io/enable-prometheus-scraping": "true",
    "prometheus.kserve.io/port": str(PORT),
    "prometheus.kserve.io/path": "/metrics",
}

#: KServe names the predictor's Knative service ``<name>-predictor``, and Knative needs that
#: to be a DNS label of 63 characters at most
ISVC_NAME_MAX = NAME_MAX - len("-predictor")

_CANARY = ("spec", "predictor", "canaryTrafficPercent")
_CHAMPION_ANNOTATION = f"{ANNOTATION_PREFIX}/champion-version"


class MirrorUnsupported(ManifestError):
    """A mirror share was asked of KServe, which cannot mirror requests."""


def isvc_name(model: str) -> str:
    return k8s_name(model, max_len=ISVC_NAME_MAX)


def canary_percent(champion: Deployable | None, weights: Weights) -> int | None:
    """``canaryTrafficPercent`` for ``weights``; None (no field) when the latest revision
    should take all requests, as a first version with no champion does."""
    if weights.mirror > 0:
        raise MirrorUnsupported(
            f"KServe cannot mirror requests, but a mirror share of {weights.mirror:g} was asked",
            hint="set rollout.target: seldon in the policy to mirror, or rollout.mirror_share: 0 "
            "to canary on KServe without mirroring",
        )
    return None if champion is None else weights.challenger


def _probe(path: str, period_s: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": PORT},
        "periodSeconds": period_s,
        "failureThreshold": failures,
    }


def predictor(challenger: Deployable, percent: int | None) -> Manifest:
    if not challenger.image:
        raise ManifestError(
            f"{challenger.model} version {challenger.version} has no image for KServe to run",
            hint="deploy it with package.image: always (the package stage builds the image; "
            "push it to a registry the cluster can pull from), or use --router seldon",
        )
    if "@sha256:" not in challenger.image:
        raise ManifestError(
            f"{challenger.model} version {challenger.version}'s image {challenger.image} is not "
            "a pushed image by digest: a cluster cannot pull it, and a tag could serve other "
            "bytes than the ones that passed the gates",
            hint="set package.registry in the policy (the package stage pushes the image and "
            "records REGISTRY/PATH@sha256:...), and deploy the version again",
        )
    container = {
        # KServe looks up the serving container of a custom predictor by this name
        "name": "kserve-container",
        "image": challenger.image,
        # Knative routes to the one declared port; "http1" tells it the protocol
        "ports": [{"containerPort": PORT, "name": "http1", "protocol": "TCP"}],
        "readinessProbe": _probe(READY_PATH, period_s=5, failures=3),
        # lenient: a slow model load must not look like a dead process
        "livenessProbe": _probe(LIVE_PATH, period_s=10, failures=6),
    }
    if challenger.storage_secret:
        # only the storage keys, each optional: never the MLflow token the Secret also holds
        container["env"] = [
            {"name": var, "valueFrom": {"secretKeyRef": {
                "name": challenger.storage_secret, "key": key, "optional": True}}}
            for var, key in STORAGE_ENV.items()
        ]  # fmt: skip
    spec: Manifest = {
        # no scale to zero: a cold start during the canary would count against the challenger
        "minReplicas": 1,
        "containers": [container],
    }
    if percent is not None:
        spec["canaryTrafficPercent"] = percent
    return spec


def kserve_manifests(
    champion: Deployable | None, challenger: Deployable, weights: Weights, namespace: str
) -> list[Manifest]:
    check_pair(champion, challenger)
    meta = metadata(isvc_name(challenger.model), namespace, challenger.model, challenger.version)
    if challenger.deployment_mode not in DEPLOYMENT_MODES:
        raise ManifestError(
            f"deploymentMode {challenger.deployment_mode!r} keeps no revisions, so KServe "
            "would ignore the canary split",
            hint="set rollout.kubernetes.deployment_mode: Knative (KServe 0.16 and later) or "
            "Serverless (KServe 0.13-0.15)",
        )
    meta["annotations"]["serving.kserve.io/deploymentMode"] = challenger.deployment_mode
    meta["annotations"].update(SCRAPE_ANNOTATIONS)
    if champion is not None:
        meta["annotations"][_CHAMPION_ANNOTATION] = champion.version
    isvc = {
        "apiVersion": INFERENCE_SERVICE.api_version,
        "kind": INFERENCE_SERVICE.kind,
        "metadata": meta,
        "spec": {"predictor": predictor(challenger, canary_percent(champion, weights))},
    }
    return [isvc]


def _patch_for(manifest: Manifest) -> Manifest:
    return with_nulls(manifest, _CANARY, ("metadata", "annotations", _CHAMPION_ANNOTATION))


class KServeRouter(ClusterRouter):
    """Moves traffic by patching the InferenceService's ``canaryTrafficPercent``."""

    def __init__(
        self,
        api: CustomObjects,
        namespace: str,
        champion: Deployable | None,
        challenger: Deployable,
    ) -> None:
        super().__init__(api, namespace, champion, challenger)
        self.name = isvc_name(challenger.model)

    def manifests(self, weights: Weights) -> list[Manifest]:
        return kserve_manifests(self.champion, self.challenger, weights, self.cluster.namespace)

    def apply(self, manifests: Sequence[Manifest]) -> None:
        if self.challenger.storage_secret:
            self.cluster.check_secret(self.challenger.storage_secret,
                                      "the predictor's object-store keys")  # fmt: skip
        self.cluster.apply(manifests, (INFERENCE_SERVICE,), _patch_for)

    def get_weights(self) -> Weights:
        found = self.cluster.get(INFERENCE_SERVICE, self.name)
        percent = dig(found, *_CANARY)
        if percent is None:  # no split: the latest revision, the challenger, serves everything
            return Weights(challenger=100)
        if not isinstance(percent, int) or isinstance(percent, bool):
            raise KubernetesError(
                f"InferenceService {self.name!r} has canaryTrafficPercent {percent!r}, not a "
                "whole percent",
                hint="it was probably edited by hand: re-apply modelship's manifests",
            )
        return Weights(challenger=percent)

    def set_weights(self, weights: Weights) -> None:
        percent = canary_percent(self.champion, weights)
        # None deletes the field: with no champion the latest revision takes every request
        body = {"spec": {"predictor": {"canaryTrafficPercent": percent}}}
        why = f"sending {weights.challenger}% to {self.challenger.model} v{self.challenger.version}"
        self.cluster.patch(INFERENCE_SERVICE, self.name, body, why)

    def promote(self) -> None:
        body = {"spec": {"predictor": {"canaryTrafficPercent": None}}}
        why = f"promoting {self.challenger.model} v{self.challenger.version}"
        self.cluster.patch(INFERENCE_SERVICE, self.name, body, why)
