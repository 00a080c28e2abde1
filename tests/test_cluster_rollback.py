"""A drift rollback on a cluster target moves the cluster's traffic, not only the aliases:
KServe gets the previous champion's image as a new revision with all the traffic, Seldon's
Experiment gets its Model as the only candidate. Real MLflow registry (SQLite); the cluster
is the API stand-in (tests/servers/kubeapi.py) through the real client, or an in-memory fake
where a failure is injected (no cluster runs here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelship.components.monitor.rollback import cluster_switch, rollback
from modelship.components.targets.cluster import load_api
from modelship.components.targets.kubernetes import deployable, serve_alone
from modelship.core.errors import RollbackFailed
from modelship.core.settings import Settings
from modelship.core.tags import TAG_IMAGE, TAG_K8S_OBJECTS, TAG_TRITON_URI
from modelship.policies.loader import load_policy
from modelship.registry.client import Registry
from tests.servers.kubeapi import kube_api, write_kubeconfig
from tests.support import aliases, register_forest, version_tags
from tests.test_kubernetes import FakeCustomObjects, _api_error

pytestmark = pytest.mark.slow

ON = {
    "kserve": "rollout: {target: kserve, mirror_share: 0, analysis: {prediction_check: distribution},"
    " kubernetes: {namespace: models}}",
    "seldon": "rollout: {target: seldon, analysis: {prediction_check: distribution},"
    " kubernetes: {namespace: models}}",
}


@pytest.fixture()
def promoted(settings: Settings, data: Any, request: pytest.FixtureRequest) -> dict[str, Any]:
    """v1 was the champion, v2 was promoted over it on the cluster; the cluster serves v2."""
    name = f"rolled-{request.node.name[-40:].replace('[', '-').replace(']', '')}"
    registry = Registry()
    refs = []
    for digit in ("1", "2"):
        version = register_forest(settings, name, data)
        ref = registry.resolve(name, version=version)
        registry.set_tag(ref, TAG_IMAGE, f"registry.example/models/{name}@sha256:" + digit * 64)
        # Seldon loads the Triton folder the package stage uploaded (no digest here: nothing to
        # fetch it from in this test)
        registry.set_tag(ref, TAG_TRITON_URI, f"s3://models/{name}/v{digit}")
        registry.promote(ref)
        refs.append(ref)
    return {"name": name, "registry": registry, "v1": refs[0], "v2": refs[1]}


@pytest.mark.parametrize("target", ["kserve", "seldon"])
def test_a_rollback_serves_the_previous_champion_on_the_cluster_then_moves_the_aliases(
    promoted: dict[str, Any], target: str, tmp_path: Path
) -> None:
    registry, v1, v2 = promoted["registry"], promoted["v1"], promoted["v2"]
    policy = load_policy(promoted["name"], text=ON[target]).policy
    # the API stand-in, through the real client: schemas, resourceVersions, Secrets checked
    with kube_api() as (url, stand_in):
        api = load_api(config_file=str(write_kubeconfig(tmp_path / "kubeconfig", url)))
        serve_alone(policy, deployable(registry, v2), api)  # what a promotion left serving
        done = rollback(
            registry, v2, "drift", None, cluster=cluster_switch(policy, registry, lambda: api)
        )
    assert done.switched == "cluster" and done.restored == v1.version
    assert aliases(promoted["name"])["champion"] == v1.version
    objects = {key[3]: body for key, body in stand_in.objects.items()}
    if target == "kserve":
        predictor = objects["inferenceservices"]["spec"]["predictor"]
        assert (
            predictor["containers"][0]["image"]
            == version_tags(promoted["name"])[v1.version][TAG_IMAGE]
        )
        assert "canaryTrafficPercent" not in predictor  # the new revision takes everything
    else:
        candidates = objects["experiments"]["spec"]["candidates"]
        assert [c["weight"] for c in candidates] == [100]
        assert candidates[0]["name"].endswith(f"-v{v1.version}-pipeline")
    assert version_tags(promoted["name"])[v1.version][TAG_K8S_OBJECTS]
    # on record: who rolled back, to what, why, and where the traffic was switched
    from mlflow import MlflowClient

    from modelship.registry.audit import AuditTrail

    last = AuditTrail(MlflowClient(), Settings.from_env(), promoted["name"]).entries()[-1]
    assert (last["action"], last["version"]) == ("rolled back", v1.version)
    assert last["actor"].startswith("drift monitor") and last["detail"]["where"] == "cluster"


def test_a_cluster_that_refuses_the_switch_leaves_the_aliases(promoted: dict[str, Any]) -> None:
    registry, v2 = promoted["registry"], promoted["v2"]
    policy = load_policy(promoted["name"], text=ON["kserve"]).policy
    api = FakeCustomObjects()
    serve_alone(policy, deployable(registry, v2), api)
    api.fail_with = _api_error(403, "Forbidden", "inferenceservices is forbidden")
    with pytest.raises(RollbackFailed) as failed:
        rollback(registry, v2, "drift", None, cluster=cluster_switch(policy, registry, lambda: api))
    assert "nothing in the registry was changed" in str(failed.value)
    assert aliases(promoted["name"])["champion"] == v2.version
