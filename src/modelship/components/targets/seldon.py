"""Seldon Core v2 as a traffic router: per version a ``Model`` and a one-step ``Pipeline``
around it, and one ``Experiment`` that splits the model's requests between the Pipelines.

Each version is its own ``Model`` (``breast-cancer-v3``), loaded by a Seldon server from the
version's artifact in object storage, served in its own ``Pipeline``
(``breast-cancer-v3-pipeline``): Seldon records the requests and answers of models in a
Pipeline in Kafka, and nowhere for direct calls, so that is how the drift monitor sees the
traffic. The ``Experiment`` (``resourceType: pipeline``) is named after the model
(``breast-cancer``) and stays for the model's whole life: clients that address it
(``breast-cancer.experiment``) keep working across promotions, and because its ``default`` is
the champion's Pipeline, clients that call that name during a canary are split as well.
Promotion leaves the challenger as the experiment's only candidate and default; the old
champion's objects stay as the rollback target until someone deletes them.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from modelship.components.targets.cluster import (
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

MODEL = CustomResource("mlops.seldon.io", "v1alpha1", "Model", "models")
PIPELINE = CustomResource("mlops.seldon.io", "v1alpha1", "Pipeline", "pipelines")
EXPERIMENT = CustomResource("mlops.seldon.io", "v1alpha1", "Experiment", "experiments")

#: the server capability each artifact format needs. ONNX is the optimize stage's output and
#: Seldon's Triton server advertises ``onnx``: it serves ``<storageUri>/1/model.onnx`` with the
#: ``config.pbtxt`` beside it (serving/triton.py writes both; Seldon's agent replaces the
#: config's name with its own). The other two go to MLServer: ``sklearn`` loads a
#: ``model.joblib``, ``mlflow`` loads the registry's MLflow model folder as it is.
REQUIREMENTS: dict[str, list[str]] = {
    "onnx": ["onnx"],
    "sklearn": ["sklearn"],
    "mlflow": ["mlflow"],
}


#: where Seldon's servers fetch models from (rclone remotes): object storage, never MLflow's
#: own schemes (``models:/``, ``runs:/``, ``mlflow-artifacts:/``) or a file on one machine
OBJECT_STORAGE = ("s3://", "gs://", "az://", "azureblob://", "minio://")
#: the ONNX file inside a Triton model folder (serving/triton.py writes it there)
TRITON_ONNX = "1/model.onnx"


def fetch_digest(uri: str) -> str:
    """``sha256:...`` of the object at ``uri``, downloaded with MLflow's artifact clients (S3
    with the settings' endpoint and keys, GCS, Azure)."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="modelship-seldon-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except Exception as e:  # MLflow, S3 and network errors alike
            raise KubernetesError(
                f"could not read {uri} to check it before Seldon loads it: {e}",
                hint="check MLFLOW_S3_ENDPOINT_URL and the object store's credentials",
            ) from e
        return "sha256:" + hashlib.sha256(Path(local).read_bytes()).hexdigest()


def check_storage(version: Deployable, fetch: Callable[[str], str] = fetch_digest) -> None:
    """Refuse a version Seldon could not load, or whose ONNX file is not the one that passed."""
    uri = version.storage_uri or ""
    if not uri.startswith(OBJECT_STORAGE):
        raise ManifestError(
            f"{version.model} version {version.version} lies at {uri or 'no URI'}, which "
            "Seldon's servers cannot fetch (they read object storage: s3://, gs://, az://)",
            hint="run the MLflow server with --default-artifact-root s3://BUCKET/PATH "
            "--no-serve-artifacts and deploy the version again",
        )
    if version.storage_digest:
        found = fetch(f"{uri.rstrip('/')}/{TRITON_ONNX}")
        if found != version.storage_digest:
            raise ManifestError(
                f"{version.model} version {version.version}: {uri}/{TRITON_ONNX} is {found}, "
                f"not the {version.storage_digest} that passed the gates; nothing applied",
                hint="deploy the version again so the package stage uploads it anew",
            )


def model_name(version: Deployable) -> str:
    return k8s_name(version.model, f"v{version.version}")


def pipeline_name(version: Deployable) -> str:
    return k8s_name(version.model, f"v{version.version}-pipeline")


def experiment_name(model: str) -> str:
    return k8s_name(model)


def pipeline_manifest(version: Deployable, namespace: str) -> Manifest:
    """A one-step Pipeline around the version's Model. Seldon records the requests and answers
    of models that serve in a Pipeline in Kafka (its FAQ: direct calls to a model are not
    recorded), which is where the drift monitor reads the served traffic."""
    step = model_name(version)
    return {
        "apiVersion": PIPELINE.api_version,
        "kind": PIPELINE.kind,
        "metadata": metadata(pipeline_name(version), namespace, version.model, version.version),
        "spec": {"steps": [{"name": step}], "output": {"steps": [step]}},
    }


def model_manifest(version: Deployable, namespace: str) -> Manifest:
    if not version.storage_uri:
        raise ManifestError(
            f"{version.model} version {version.version} has no storage URI for Seldon to load",
            hint="pass the artifact's object-storage location, e.g. s3://models/<name>/<version>",
        )
    return {
        "apiVersion": MODEL.api_version,
        "kind": MODEL.kind,
        "metadata": metadata(model_name(version), namespace, version.model, version.version),
        "spec": {
            "storageUri": version.storage_uri,
            "requirements": list(REQUIREMENTS[version.artifact_format]),
            # the rclone config that reads storageUri (Seldon's "storage secrets" page: the
            # URI's scheme names the config's remote)
            **({"secretName": version.rclone_secret} if version.rclone_secret else {}),
        },
    }


def traffic(champion: Deployable | None, challenger: Deployable, weights: Weights) -> Manifest:
    """The Experiment's routing: candidates, default and mirror, for ``weights``.

    A challenger at 0 is left out of the candidates rather than listed with weight 0, so an
    aborted canary never relies on how the data plane treats a zero weight; the champion stays
    listed even at 0 because Seldon requires the default to be a candidate. With no champion
    the challenger takes everything and there is nothing to mirror from.
    """
    new = pipeline_name(challenger)
    if champion is None:
        return {"default": new, "resourceType": "pipeline",
                "candidates": [{"name": new, "weight": 100}]}  # fmt: skip
    old = pipeline_name(champion)
    candidates = [{"name": old, "weight": weights.champion}]
    if weights.challenger:
        candidates.append({"name": new, "weight": weights.challenger})
    spec: Manifest = {"default": old, "resourceType": "pipeline", "candidates": candidates}
    if weights.mirror > 0:
        # Seldon mirrors whole percents; a share under 0.5% still mirrors rather than nothing
        spec["mirror"] = {"name": new, "percent": max(1, round(weights.mirror * 100))}
    return spec


def experiment_manifest(
    champion: Deployable | None, challenger: Deployable, weights: Weights, namespace: str
) -> Manifest:
    return {
        "apiVersion": EXPERIMENT.api_version,
        "kind": EXPERIMENT.kind,
        "metadata": metadata(experiment_name(challenger.model), namespace, challenger.model),
        "spec": traffic(champion, challenger, weights),
    }


def seldon_manifests(
    champion: Deployable | None, challenger: Deployable, weights: Weights, namespace: str
) -> list[Manifest]:
    """The Models, the Pipelines around them, then the Experiment that splits between the
    Pipelines (each waits for what it names)."""
    check_pair(champion, challenger)
    versions = [v for v in (champion, challenger) if v is not None]
    models = [model_manifest(v, namespace) for v in versions]
    pipelines = [pipeline_manifest(v, namespace) for v in versions]
    return [*models, *pipelines, experiment_manifest(champion, challenger, weights, namespace)]


def _patch_for(manifest: Manifest) -> Manifest:
    if manifest["kind"] == EXPERIMENT.kind:
        return with_nulls(manifest, ("spec", "mirror"))
    return manifest


def weights_of(experiment: Manifest, challenger: str) -> Weights:
    """Read back what :func:`traffic` wrote, as the challenger's share of the total weight."""
    candidates = dig(experiment, "spec", "candidates") or []
    try:
        by_name = {str(c["name"]): int(c["weight"]) for c in candidates}
        mirror = dig(experiment, "spec", "mirror") or {}
        mirrored = int(mirror["percent"]) / 100 if mirror.get("name") == challenger else 0.0
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise KubernetesError(
            f"Experiment {dig(experiment, 'metadata', 'name')!r} has a spec modelship cannot "
            f"read: {e!r}",
            hint="it was probably edited by hand: re-apply modelship's manifests",
        ) from e
    total = sum(by_name.values())
    share = round(100 * by_name.get(challenger, 0) / total) if total else 0
    return Weights(challenger=share, mirror=mirrored)


class SeldonRouter(ClusterRouter):
    """Moves traffic by patching the model's Experiment."""

    def __init__(
        self,
        api: CustomObjects,
        namespace: str,
        champion: Deployable | None,
        challenger: Deployable,
        fetch: Callable[[str], str] = fetch_digest,
    ) -> None:
        super().__init__(api, namespace, champion, challenger)
        self.experiment = experiment_name(challenger.model)
        self.fetch = fetch

    def manifests(self, weights: Weights) -> list[Manifest]:
        return seldon_manifests(self.champion, self.challenger, weights, self.cluster.namespace)

    def apply(self, manifests: Sequence[Manifest]) -> None:
        # what Seldon will load is checked first: fetchable, and byte for byte what passed
        for version in (self.champion, self.challenger):
            if version is not None:
                check_storage(version, self.fetch)
        if self.challenger.rclone_secret:
            self.cluster.check_secret(self.challenger.rclone_secret,
                                      "the rclone config Seldon's servers read the model with")  # fmt: skip
        self.cluster.apply(manifests, (MODEL, PIPELINE, EXPERIMENT), _patch_for)

    def get_weights(self) -> Weights:
        found = self.cluster.get(EXPERIMENT, self.experiment)
        return weights_of(found, pipeline_name(self.challenger))

    def set_weights(self, weights: Weights) -> None:
        # the whole routing is written each time, so a step re-run after a restart, or one that
        # follows a hand edit, converges on the same spec
        spec = with_nulls(
            {"spec": traffic(self.champion, self.challenger, weights)}, ("spec", "mirror")
        )
        why = f"sending {weights.challenger}% to {self.challenger.model} v{self.challenger.version}"
        self.cluster.patch(EXPERIMENT, self.experiment, spec, why)

    def promote(self) -> None:
        new = pipeline_name(self.challenger)
        spec = {"default": new, "resourceType": "pipeline",
                "candidates": [{"name": new, "weight": 100}], "mirror": None}  # fmt: skip
        why = f"promoting {self.challenger.model} v{self.challenger.version}"
        self.cluster.patch(EXPERIMENT, self.experiment, {"spec": spec}, why)
