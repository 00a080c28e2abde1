"""The Kubernetes targets: manifests checked against the real Seldon Core v2 and KServe CRD
schemas, and the routers driven through a fake custom-object API that keeps objects the way
the API server would (create, 409 on a second create, JSON merge patch).

No cluster is needed. The CRDs lie outside the project, in ``../shared/schemas`` (or
``$MODELSHIP_CRD_SCHEMAS``); where they are absent the schema tests skip and say where they
looked.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped]

from modelship.components.targets.cluster import KubernetesError, Manifest, ManifestError, k8s_name
from modelship.components.targets.kserve import ISVC_NAME_MAX, KServeRouter, kserve_manifests
from modelship.components.targets.kubernetes import (
    K8S_ROUTERS,
    Deployable,
    KubernetesRouter,
    MirrorUnsupported,
    dry_run,
    manifests_for,
    router_for,
)
from modelship.components.targets.seldon import SeldonRouter, seldon_manifests
from modelship.core.errors import InputError, StageError
from modelship.core.traffic import TrafficRouter, Weights
from tests.crds import schema_errors
from tests.servers.kubeapi import merge_patch

CHAMPION = Deployable(
    "breast-cancer",
    "3",
    image="ghcr.io/acme/breast-cancer@sha256:" + "3" * 64,
    storage_uri="s3://models/bc/3",
)
CHALLENGER = Deployable(
    "breast-cancer",
    "4",
    image="ghcr.io/acme/breast-cancer@sha256:" + "4" * 64,
    storage_uri="s3://models/bc/4",
)
NAMESPACE = "models"
#: as deployable() makes them from a policy: the Secrets the serving pods read storage with
CHALLENGER_SECRETS = dataclasses.replace(
    CHALLENGER, storage_secret="modelship-settings", rclone_secret="modelship-rclone",
    deployment_mode="Serverless",
)  # fmt: skip

# -- the real CRD schemas ----------------------------------------------------------------------

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def object_errors(manifest: Manifest) -> list[str]:
    """The core object checks the API server makes before any CRD schema."""
    meta = manifest["metadata"]
    errors = [
        f"metadata.{key} {meta[key]!r} is not a DNS-1123 label"
        for key in ("name", "namespace")
        if not (DNS1123_LABEL.match(meta[key]) and len(meta[key]) <= 63)
    ]
    for key, value in meta.get("labels", {}).items():
        if not (LABEL_VALUE.match(value) and len(value) <= 63):
            errors.append(f"label {key}={value!r} is not a valid label value")
    errors += [
        f"annotation {key} is not a string"
        for key, value in meta.get("annotations", {}).items()
        if not isinstance(value, str)
    ]
    return errors


SCENARIOS: dict[str, tuple[str, Deployable | None, Weights, Deployable]] = {
    "seldon canary": ("seldon", CHAMPION, Weights(10), CHALLENGER),
    "seldon canary with mirror": ("seldon", CHAMPION, Weights(25, mirror=0.5), CHALLENGER),
    "seldon shadow only": ("seldon", CHAMPION, Weights(0, mirror=1.0), CHALLENGER),
    "seldon first version": ("seldon", None, Weights(10), CHALLENGER),
    "kserve canary": ("kserve", CHAMPION, Weights(10), CHALLENGER),
    "kserve aborted": ("kserve", CHAMPION, Weights(0), CHALLENGER),
    "kserve first version": ("kserve", None, Weights(50), CHALLENGER),
    "seldon with its rclone Secret": ("seldon", CHAMPION, Weights(10), CHALLENGER_SECRETS),
    "kserve with storage keys": ("kserve", CHAMPION, Weights(10), CHALLENGER_SECRETS),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_generated_manifests_pass_the_real_crd_schemas(scenario: str) -> None:
    target, champion, weights, challenger = SCENARIOS[scenario]
    manifests = manifests_for(target, champion, challenger, weights, NAMESPACE)
    assert manifests
    for manifest in manifests:
        where = f"{manifest['kind']} {manifest['metadata']['name']}"
        assert schema_errors(manifest) == [], where
        assert object_errors(manifest) == [], where


def _broken(manifest: Manifest, path: tuple[str | int, ...], value: Any) -> Manifest:
    """``manifest`` with ``path`` set to ``value``, or removed where ``value`` is ``...``."""
    out = copy.deepcopy(manifest)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


BROKEN: dict[str, tuple[int | str, tuple[str | int, ...], Any]] = {
    "weight as a string": (-1, ("spec", "candidates", 1, "weight"), "10"),
    "candidate without a weight": (-1, ("spec", "candidates", 0, "weight"), ...),
    "Pipeline without steps": (2, ("spec", "steps"), ...),
    "Model without storageUri": (0, ("spec", "storageUri"), ...),
    "misspelt Model field": (0, ("spec", "storageURI"), "s3://models/bc/3"),
    "percent as a float": ("isvc", ("spec", "predictor", "canaryTrafficPercent"), 10.5),
    "misspelt canary field": ("isvc", ("spec", "predictor", "canaryTrafficPercentage"), 10),
    "container without a name": ("isvc", ("spec", "predictor", "containers", 0, "name"), ...),
    "port as a list": ("isvc", ("spec", "predictor", "containers", 0, "ports"), 3000),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_manifest_fails_the_schema_check(case: str) -> None:
    which, path, value = BROKEN[case]
    if which == "isvc":
        manifest = kserve_manifests(CHAMPION, CHALLENGER, Weights(10), NAMESPACE)[0]
    else:
        manifest = seldon_manifests(CHAMPION, CHALLENGER, Weights(10), NAMESPACE)[int(which)]
    assert schema_errors(manifest) == []
    assert schema_errors(_broken(manifest, path, value)) != []


def test_the_object_check_catches_a_bad_name() -> None:
    manifest = seldon_manifests(None, CHALLENGER, Weights(), NAMESPACE)[0]
    assert object_errors(_broken(manifest, ("metadata", "name"), "Breast_Cancer")) != []


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("breast-cancer", "breast-cancer"),
        ("My_Model", "my-model"),
        ("fraud.detector v2", "fraud-detector-v2"),
        ("--edge--", "edge"),
        ("2024-churn", "m-2024-churn"),
    ],
)
def test_model_names_become_kubernetes_names(model: str, name: str) -> None:
    assert k8s_name(model) == name


def test_a_long_name_is_shortened_and_keeps_its_version_apart() -> None:
    model = "a-very-long-registered-model-name-" * 3
    v3, v4 = k8s_name(model, "v3"), k8s_name(model, "v4")
    assert len(v3) <= 63 and v3.endswith("-v3") and DNS1123_LABEL.match(v3)
    assert v3[:-3] == v4[:-3]
    assert k8s_name(model + "x", "v3") != v3  # the digest tells similar long names apart
    isvc = kserve_manifests(
        None, Deployable(model, "4", image="img@sha256:" + "0" * 64), Weights(), NAMESPACE
    )[0]
    assert len(isvc["metadata"]["name"]) <= ISVC_NAME_MAX


def test_a_name_without_letters_or_digits_is_refused() -> None:
    with pytest.raises(ManifestError, match="no letter or digit") as caught:
        k8s_name("___")
    assert isinstance(caught.value, InputError) and caught.value.hint


def test_labels_keep_sanitized_names_and_annotations_the_registry_name() -> None:
    model = seldon_manifests(
        None, Deployable("My_Model", "7", storage_uri="gs://m/7"), Weights(), NAMESPACE
    )[0]
    meta = model["metadata"]
    assert meta["name"] == "my-model-v7"
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "modelship",
        "app.kubernetes.io/name": "my-model",
        "app.kubernetes.io/version": "7",
    }
    assert meta["annotations"]["modelship.io/registered-model"] == "My_Model"


def test_a_bad_namespace_is_refused() -> None:
    with pytest.raises(ManifestError, match="namespace"):
        seldon_manifests(None, CHALLENGER, Weights(), "Models")


# -- what the manifests say --------------------------------------------------------------------


@pytest.mark.parametrize("share", [0, 1, 10, 50, 99, 100])
def test_seldon_candidates_sum_to_100_with_the_champion_as_default(share: int) -> None:
    models_v3, models_v4, _, pipe_v4, experiment = seldon_manifests(
        CHAMPION, CHALLENGER, Weights(share), NAMESPACE
    )
    # each version serves in its own Pipeline (Seldon records a Pipeline's traffic in Kafka)
    assert pipe_v4["spec"] == {"steps": [{"name": "breast-cancer-v4"}],
                               "output": {"steps": ["breast-cancer-v4"]}}  # fmt: skip
    assert experiment["spec"]["resourceType"] == "pipeline"
    assert models_v3["spec"]["storageUri"] == "s3://models/bc/3"
    assert models_v4["spec"]["storageUri"] == "s3://models/bc/4"
    spec = experiment["spec"]
    weights = {c["name"]: c["weight"] for c in spec["candidates"]}
    assert sum(weights.values()) == 100
    assert weights.get("breast-cancer-v4-pipeline", 0) == share
    assert spec["default"] == "breast-cancer-v3-pipeline"
    assert "mirror" not in spec


def test_seldon_mirrors_a_share_to_the_challenger() -> None:
    experiment = seldon_manifests(CHAMPION, CHALLENGER, Weights(0, mirror=0.25), NAMESPACE)[-1]
    assert experiment["spec"]["mirror"] == {"name": "breast-cancer-v4-pipeline", "percent": 25}
    assert experiment["spec"]["candidates"] == [
        {"name": "breast-cancer-v3-pipeline", "weight": 100}
    ]


def test_seldon_first_version_takes_everything() -> None:
    manifests = seldon_manifests(None, CHALLENGER, Weights(10, mirror=0.5), NAMESPACE)
    assert [m["kind"] for m in manifests] == ["Model", "Pipeline", "Experiment"]
    assert manifests[2]["spec"] == {
        "default": "breast-cancer-v4-pipeline",
        "resourceType": "pipeline",
        "candidates": [{"name": "breast-cancer-v4-pipeline", "weight": 100}],
    }


def test_seldon_requirements_follow_the_artifact_format() -> None:
    sk = Deployable("iris", "1", storage_uri="gs://m/iris/1", artifact_format="sklearn")
    assert seldon_manifests(None, sk, Weights(), NAMESPACE)[0]["spec"]["requirements"] == [
        "sklearn"
    ]
    with pytest.raises(ManifestError, match="artifact format"):
        Deployable("iris", "1", artifact_format="pickle")


def test_seldon_needs_a_storage_uri_and_kserve_an_image() -> None:
    with pytest.raises(ManifestError, match="storage URI"):
        seldon_manifests(None, Deployable("iris", "1", image="img"), Weights(), NAMESPACE)
    with pytest.raises(ManifestError, match="no image"):
        kserve_manifests(None, Deployable("iris", "1", storage_uri="s3://m"), Weights(), NAMESPACE)


def test_champion_and_challenger_must_be_two_versions_of_one_model() -> None:
    with pytest.raises(ManifestError, match="different models"):
        seldon_manifests(
            Deployable("iris", "1", storage_uri="s3://a"), CHALLENGER, Weights(), NAMESPACE
        )
    with pytest.raises(ManifestError, match="both champion and challenger"):
        kserve_manifests(CHALLENGER, CHALLENGER, Weights(), NAMESPACE)


def test_kserve_runs_the_bento_image_with_the_canary_percent() -> None:
    (isvc,) = kserve_manifests(CHAMPION, CHALLENGER, Weights(10), NAMESPACE)
    predictor = isvc["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    (container,) = predictor["containers"]
    assert container["image"] == CHALLENGER.image  # the pushed image, by digest
    assert container["ports"][0]["containerPort"] == 3000
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 3000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": 3000}
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"


def test_kserve_predictor_gets_only_the_storage_keys_of_the_secret_in_the_mode_asked() -> None:
    (isvc,) = kserve_manifests(CHAMPION, CHALLENGER_SECRETS, Weights(10), NAMESPACE)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    (container,) = isvc["spec"]["predictor"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert set(refs) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                         "AWS_ENDPOINT_URL"}  # never MLFLOW_TRACKING_TOKEN  # fmt: skip
    assert refs["AWS_ENDPOINT_URL"] == {"name": "modelship-settings",
                                        "key": "MLFLOW_S3_ENDPOINT_URL", "optional": True}  # fmt: skip
    standard = dataclasses.replace(CHALLENGER, deployment_mode="Standard")
    with pytest.raises(ManifestError, match="ignore the canary split") as refused:
        kserve_manifests(CHAMPION, standard, Weights(10), NAMESPACE)
    assert "deployment_mode: Knative" in (refused.value.hint or "")


def test_seldon_models_name_their_rclone_secret() -> None:
    manifests = seldon_manifests(CHAMPION, CHALLENGER_SECRETS, Weights(10), NAMESPACE)
    models = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Model"}
    assert models["breast-cancer-v4"]["spec"]["secretName"] == "modelship-rclone"
    assert "secretName" not in models["breast-cancer-v3"]["spec"]  # none given for it
    assert models["breast-cancer-v4"]["spec"]["requirements"] == ["onnx"]  # Triton


def test_seldon_checks_what_it_will_load_before_applying_anything() -> None:
    onnx_digest = "sha256:" + "ab" * 32
    served = dataclasses.replace(CHALLENGER, storage_digest=onnx_digest)
    fetched: list[str] = []

    def fetch(uri: str) -> str:
        fetched.append(uri)
        return onnx_digest if uri.startswith(str(served.storage_uri)) else "sha256:00"

    api = FakeCustomObjects()
    router = SeldonRouter(api, NAMESPACE, None, served, fetch=fetch)
    router.apply(router.manifests(Weights(100)))
    assert fetched == ["s3://models/bc/4/1/model.onnx"]  # Triton's layout
    assert api.one("Experiment")

    changed = dataclasses.replace(served, storage_uri="s3://models/bc/elsewhere")
    api = FakeCustomObjects()
    router = SeldonRouter(api, NAMESPACE, None, changed, fetch=fetch)
    with pytest.raises(ManifestError, match="not the sha256:abab"):
        router.apply(router.manifests(Weights(100)))
    assert api.objects == {}  # nothing applied
    local = dataclasses.replace(CHALLENGER, storage_uri="file:///home/me/mlruns/1/model")
    router = SeldonRouter(api, NAMESPACE, None, local, fetch=fetch)
    with pytest.raises(ManifestError, match="cannot fetch") as refused:
        router.apply(router.manifests(Weights(100)))
    assert "--no-serve-artifacts" in (refused.value.hint or "")
    assert api.objects == {}


def test_kserve_first_version_has_no_canary_percent() -> None:
    (isvc,) = kserve_manifests(None, CHALLENGER, Weights(10), NAMESPACE)
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]


def test_kserve_refuses_a_mirror_and_names_the_fix() -> None:
    with pytest.raises(MirrorUnsupported) as caught:
        kserve_manifests(CHAMPION, CHALLENGER, Weights(10, mirror=0.5), NAMESPACE)
    assert "cannot mirror" in str(caught.value)
    assert "rollout.target: seldon" in str(caught.value)
    assert "mirror_share: 0" in str(caught.value)


@pytest.mark.parametrize(
    ("target", "kinds"),
    [
        ("seldon", ["Model"] * 2 + ["Pipeline"] * 2 + ["Experiment"]),
        ("kserve", ["InferenceService"]),
    ],
)
def test_dry_run_is_multi_document_yaml(target: str, kinds: list[str]) -> None:
    text = dry_run(target, CHAMPION, CHALLENGER, Weights(10), NAMESPACE)
    documents = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in documents] == kinds
    assert documents == manifests_for(target, CHAMPION, CHALLENGER, Weights(10), NAMESPACE)


def test_dry_run_of_an_unknown_target_names_the_choices() -> None:
    with pytest.raises(ManifestError, match="not a Kubernetes rollout target") as caught:
        dry_run("local", None, CHALLENGER, Weights(), NAMESPACE)
    assert "seldon" in str(caught.value) and "kserve" in str(caught.value)


# -- routers against a fake API ----------------------------------------------------------------


def _api_error(status: int, reason: str, message: str) -> ApiException:
    error = ApiException(status=status, reason=reason)
    error.body = json.dumps({"kind": "Status", "message": message, "code": status})
    return error


class FakeCustomObjects:
    """Keeps objects by (group, version, namespace, plural, name) and records every call."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, ...], Manifest] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_with: ApiException | None = None

    def _check(self, verb: str, name: str) -> None:
        self.calls.append((verb, name))
        if self.fail_with is not None:
            raise self.fail_with

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> object:
        self._check("get", name)
        key = (group, version, namespace, plural, name)
        if key not in self.objects:
            raise _api_error(404, "Not Found", f'{plural}.{group} "{name}" not found')
        return copy.deepcopy(self.objects[key])

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: Manifest
    ) -> object:
        name = body["metadata"]["name"]
        self._check("create", name)
        key = (group, version, namespace, plural, name)
        if key in self.objects:
            raise _api_error(409, "Conflict", f'{plural}.{group} "{name}" already exists')
        self.objects[key] = copy.deepcopy(body)
        return copy.deepcopy(body)

    def patch_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Manifest
    ) -> object:
        self._check("patch", name)
        key = (group, version, namespace, plural, name)
        if key not in self.objects:
            raise _api_error(404, "Not Found", f'{plural}.{group} "{name}" not found')
        self.objects[key] = merge_patch(self.objects[key], body)
        return copy.deepcopy(self.objects[key])

    def stored(self) -> Iterator[Manifest]:
        return iter(self.objects.values())

    def one(self, kind: str) -> Manifest:
        (found,) = [m for m in self.stored() if m["kind"] == kind]
        return found


def _deployed(
    target: str, champion: Deployable | None = CHAMPION
) -> tuple[FakeCustomObjects, KubernetesRouter]:
    api = FakeCustomObjects()
    router = router_for(target, api, NAMESPACE, champion, CHALLENGER)
    router.apply(router.manifests(Weights(0)))
    return api, router


def test_the_table_holds_traffic_routers() -> None:
    assert set(K8S_ROUTERS) == {"seldon", "kserve"}
    for target in K8S_ROUTERS:
        router: TrafficRouter = router_for(
            target, FakeCustomObjects(), NAMESPACE, CHAMPION, CHALLENGER
        )
        assert router is not None


@pytest.mark.parametrize("target", ["seldon", "kserve"])
def test_set_then_get_weights_round_trips(target: str) -> None:
    _, router = _deployed(target)
    assert router.get_weights() == Weights(0)
    for share in (10, 50, 100, 0):
        router.set_weights(Weights(share))
        assert router.get_weights() == Weights(share)


def test_seldon_weights_and_mirror_land_in_the_experiment() -> None:
    api, router = _deployed("seldon")
    router.set_weights(Weights(10, mirror=0.5))
    spec = api.one("Experiment")["spec"]
    assert sum(c["weight"] for c in spec["candidates"]) == 100
    assert {c["name"]: c["weight"] for c in spec["candidates"]} == {
        "breast-cancer-v3-pipeline": 90,
        "breast-cancer-v4-pipeline": 10,
    }
    assert spec["mirror"] == {"name": "breast-cancer-v4-pipeline", "percent": 50}
    assert router.get_weights() == Weights(10, mirror=0.5)
    router.set_weights(Weights(20))
    assert "mirror" not in api.one("Experiment")["spec"]  # a later step without mirror stops it


def test_seldon_abort_sends_everything_back_to_the_champion() -> None:
    api, router = _deployed("seldon")
    router.set_weights(Weights(50, mirror=0.2))
    router.set_weights(Weights(0))
    spec = api.one("Experiment")["spec"]
    assert spec["candidates"] == [{"name": "breast-cancer-v3-pipeline", "weight": 100}]
    assert spec["default"] == "breast-cancer-v3-pipeline" and "mirror" not in spec
    assert router.get_weights() == Weights(0)


def test_seldon_promote_leaves_the_challenger_alone_and_default() -> None:
    api, router = _deployed("seldon")
    router.set_weights(Weights(50, mirror=0.5))
    router.promote()
    spec = api.one("Experiment")["spec"]
    assert spec == {
        "default": "breast-cancer-v4-pipeline",
        "resourceType": "pipeline",
        "candidates": [{"name": "breast-cancer-v4-pipeline", "weight": 100}],
    }
    assert router.get_weights() == Weights(100)
    # the old champion stays loaded: it is the rollback target
    names = {m["metadata"]["name"] for m in api.stored() if m["kind"] == "Model"}
    assert names == {"breast-cancer-v3", "breast-cancer-v4"}


def test_kserve_promote_and_abort_move_the_canary_percent() -> None:
    api, router = _deployed("kserve")
    router.set_weights(Weights(10))
    assert api.one("InferenceService")["spec"]["predictor"]["canaryTrafficPercent"] == 10
    router.set_weights(Weights(0))
    assert api.one("InferenceService")["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert router.get_weights() == Weights(0)
    router.promote()
    assert "canaryTrafficPercent" not in api.one("InferenceService")["spec"]["predictor"]
    assert router.get_weights() == Weights(100)


def test_kserve_router_refuses_a_mirror_before_calling_the_api() -> None:
    api, router = _deployed("kserve")
    calls = len(api.calls)
    with pytest.raises(MirrorUnsupported, match="mirror_share: 0"):
        router.set_weights(Weights(10, mirror=0.1))
    assert len(api.calls) == calls


@pytest.mark.parametrize("target", ["seldon", "kserve"])
def test_apply_creates_then_patches_on_conflict(target: str) -> None:
    api, router = _deployed(target)
    created = [name for verb, name in api.calls if verb == "create"]
    assert created and not [c for c in api.calls if c[0] == "patch"]
    api.calls.clear()
    router.apply(router.manifests(Weights(30)))
    # the patch goes with the resourceVersion just read, never blind
    assert [verb for verb, _ in api.calls] == ["create", "get", "patch"] * len(created)
    assert router.get_weights() == Weights(30)


def test_kserve_reapplying_a_first_version_clears_an_old_canary_percent() -> None:
    api, router = _deployed("kserve")
    router.set_weights(Weights(10))
    first = KServeRouter(api, NAMESPACE, None, CHALLENGER)
    first.apply(first.manifests(Weights()))
    predictor = api.one("InferenceService")["spec"]["predictor"]
    assert "canaryTrafficPercent" not in predictor  # a merge patch alone would have kept 10


def test_seldon_first_version_router_keeps_everything_on_the_challenger() -> None:
    _, router = _deployed("seldon", champion=None)
    router.set_weights(Weights(10))
    assert router.get_weights() == Weights(100)
    assert isinstance(router, SeldonRouter)


def test_api_errors_become_modelship_errors_that_say_what_failed() -> None:
    api, router = _deployed("seldon")
    api.fail_with = _api_error(
        403, "Forbidden", 'experiments.mlops.seldon.io "breast-cancer" is forbidden: User "ci"'
    )
    with pytest.raises(KubernetesError) as caught:
        router.set_weights(Weights(10))
    error = caught.value
    assert isinstance(error, StageError) and error.status == 403
    assert isinstance(error.__cause__, ApiException)
    text = str(error)
    assert "sending 10% to breast-cancer v4" in text
    assert "Experiment models/breast-cancer" in text
    assert "HTTP 403 Forbidden" in text and 'User "ci"' in text
    assert "experiments.mlops.seldon.io" in (error.hint or "")


def test_reading_a_missing_object_says_to_apply_first() -> None:
    router = KServeRouter(FakeCustomObjects(), NAMESPACE, CHAMPION, CHALLENGER)
    with pytest.raises(
        KubernetesError, match="reading InferenceService models/breast-cancer"
    ) as caught:
        router.get_weights()
    assert caught.value.status == 404
    assert "inferenceservices.serving.kserve.io" in (caught.value.hint or "")


def test_a_server_error_during_create_is_not_mistaken_for_a_conflict() -> None:
    api = FakeCustomObjects()
    api.fail_with = _api_error(500, "Internal Server Error", "etcdserver: request timed out")
    router = SeldonRouter(api, NAMESPACE, CHAMPION, CHALLENGER)
    with pytest.raises(KubernetesError, match="creating Model models/breast-cancer-v3") as caught:
        router.apply(router.manifests(Weights(10)))
    assert "etcdserver" in str(caught.value)
    assert api.calls == [("create", "breast-cancer-v3")]


def test_a_missing_kubeconfig_is_a_modelship_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(KubernetesError, match="could not load Kubernetes credentials") as caught:
        SeldonRouter.from_kubeconfig(
            NAMESPACE, CHAMPION, CHALLENGER, config_file=str(tmp_path / "missing")
        )
    assert "KUBECONFIG" in (caught.value.hint or "")
