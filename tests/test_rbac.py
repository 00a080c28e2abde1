"""The RBAC the pipeline's ServiceAccount needs: valid Kubernetes objects (kubernetes-validate,
against the API's own schemas), exactly the verbs the routers use on the kinds they touch,
committed beside the pipelines and printed by `modelship deploy --target k8s --dry-run`."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from modelship.components.targets.cluster import Manifest
from modelship.components.targets.kubernetes import router_for
from modelship.components.targets.rbac import SERVICE_ACCOUNT, rbac_manifests
from modelship.core.settings import Settings
from modelship.core.traffic import Weights
from modelship.pipelines.compile import PIPELINE_DIR
from tests.support import register_forest
from tests.test_kubernetes import CHALLENGER, CHAMPION, FakeCustomObjects


@pytest.mark.parametrize("namespace", ["default", "kubeflow-user-example-com"])
def test_every_object_is_valid_for_the_kubernetes_api(namespace: str) -> None:
    for manifest in rbac_manifests(namespace):
        kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)
        if manifest["kind"].startswith("Cluster"):  # cluster-scoped: named for the namespace
            assert manifest["kind"] == "ClusterRole" or namespace in manifest["metadata"]["name"]
        else:
            assert manifest["metadata"]["namespace"] == namespace


def test_the_role_allows_what_the_routers_call_and_nothing_more() -> None:
    _, role, binding, crd_reader, crd_binding = rbac_manifests("models")
    custom = [rule for rule in role["rules"] if rule["apiGroups"] != [""]]
    allowed = {(g, r, v) for rule in custom for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}  # fmt: skip
    # and of the core API, only whether the policy's storage Secrets exist, by name
    (secrets,) = [rule for rule in role["rules"] if rule["apiGroups"] == [""]]
    assert secrets == {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                       "resourceNames": ["modelship-rclone", "modelship-settings"]}  # fmt: skip
    # what the routers really call, on a recording fake of the API: apply twice (create, then
    # merge-patch on conflict), read the weights, move them, promote
    api = RecordingApi()
    for target in ("kserve", "seldon"):
        router = router_for(target, api, "models", CHAMPION, CHALLENGER)
        router.apply(router.manifests(Weights(0)))
        router.apply(router.manifests(Weights(0)))
        router.get_weights()
        router.set_weights(Weights(20))
        router.promote()
    assert api.used == allowed
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": "models"}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    # cluster-wide, only reading the CRDs whose schemas the manifests are checked against
    (rule,) = crd_reader["rules"]
    assert rule["verbs"] == ["get"] and sorted(rule["resourceNames"]) == sorted(
        {f"{plural}.{group}" for group, plural, _ in allowed})  # fmt: skip
    assert crd_binding["roleRef"]["name"] == crd_reader["metadata"]["name"]
    assert crd_binding["subjects"] == binding["subjects"]


class RecordingApi(FakeCustomObjects):
    """The fake cluster API, noting (group, plural, verb) for every call."""

    def __init__(self) -> None:
        super().__init__()
        self.used: set[tuple[str, str, str]] = set()

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str,
                                     plural: str, name: str) -> object:  # fmt: skip
        self.used.add((group, plural, "get"))
        return super().get_namespaced_custom_object(group, version, namespace, plural, name)

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str,
                                        plural: str, body: Manifest) -> object:  # fmt: skip
        self.used.add((group, plural, "create"))
        return super().create_namespaced_custom_object(group, version, namespace, plural, body)

    def patch_namespaced_custom_object(self, group: str, version: str, namespace: str,
                                       plural: str, name: str, body: Manifest) -> object:  # fmt: skip
        self.used.add((group, plural, "patch"))
        return super().patch_namespaced_custom_object(group, version, namespace, plural, name, body)


def test_the_committed_file_is_the_default_namespaces_rbac() -> None:
    docs = list(yaml.safe_load_all((PIPELINE_DIR / "rbac.yaml").read_text()))
    assert docs == rbac_manifests("default")


@pytest.mark.slow
def test_the_dry_run_prints_the_rbac_first(settings: Settings, data: Any) -> None:
    from modelship.k8s import print_manifests

    version = register_forest(settings, "dry-run-model", data)
    text = print_manifests("dry-run-model", version, None, None, "seldon", "models")
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "Model",
        "Pipeline",
        "Experiment",
    ]
    assert docs[:5] == rbac_manifests("models")
