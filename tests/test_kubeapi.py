"""The routers against the Kubernetes API stand-in over real HTTP, with the official client:
what a cluster without the CRDs, without the namespace, or with another writer answers, and
what modelship then says. The stand-in checks every object against the real CRD schemas."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelship.components.targets.cluster import (
    CustomObjects,
    Deployable,
    KubernetesError,
    ManifestError,
    load_api,
)
from modelship.components.targets.kserve import KServeRouter
from modelship.components.targets.seldon import SeldonRouter
from modelship.core.traffic import Weights
from tests import crds
from tests.servers.kubeapi import ALL_CRDS, KubeApi, kube_api, write_kubeconfig

CHAMPION = Deployable("bc", "3", image="ghcr.io/acme/bc@sha256:" + "3" * 64,
                      storage_uri="s3://models/bc/3")  # fmt: skip
CHALLENGER = Deployable("bc", "4", image="ghcr.io/acme/bc@sha256:" + "4" * 64,
                        storage_uri="s3://models/bc/4")  # fmt: skip


def _api(tmp_path: Path, url: str) -> CustomObjects:
    return load_api(config_file=str(write_kubeconfig(tmp_path / "kubeconfig", url)))


def test_a_canary_runs_through_the_real_client_and_every_object_passes_its_schema(
    tmp_path: Path,
) -> None:
    with kube_api() as (url, api):
        router = SeldonRouter(_api(tmp_path, url), "models", CHAMPION, CHALLENGER)
        router.apply(router.manifests(Weights(0)))
        router.set_weights(Weights(25, mirror=0.5))
        assert router.get_weights() == Weights(25, mirror=0.5)
        router.promote()
        assert router.get_weights() == Weights(100)
        kinds = sorted({kind for _, kind, _ in api.writes})
        assert kinds == ["Experiment", "Model", "Pipeline"]


def test_a_cluster_without_the_crds_is_bad_input_naming_what_to_install(tmp_path: Path) -> None:
    kserve_only = KubeApi(crds=frozenset(c for c in ALL_CRDS if "kserve" in c))
    with kube_api(kserve_only) as (url, _):
        router = SeldonRouter(_api(tmp_path, url), "models", None, CHALLENGER)
        with pytest.raises(ManifestError) as missing:  # an InputError: exit 2
            router.apply(router.manifests(Weights(100)))
    assert "not installed on this cluster (no CRD models.mlops.seldon.io)" in missing.value.message
    assert "install Seldon Core v2" in (missing.value.hint or "")


def test_a_namespace_that_does_not_exist_is_named(tmp_path: Path) -> None:
    with kube_api() as (url, _):
        router = KServeRouter(_api(tmp_path, url), "team-b", None, CHALLENGER)
        with pytest.raises(ManifestError) as missing:
            router.apply(router.manifests(Weights(100)))
    assert "namespace team-b does not exist" in missing.value.message
    assert "kubectl create namespace team-b" in (missing.value.hint or "")


def test_a_secret_that_does_not_exist_is_named_before_anything_is_applied(
    tmp_path: Path,
) -> None:
    import dataclasses

    with kube_api() as (url, api):
        api.secrets.discard(("models", "modelship-rclone"))
        seldon = dataclasses.replace(CHALLENGER, rclone_secret="modelship-rclone")
        router = SeldonRouter(_api(tmp_path, url), "models", None, seldon)
        with pytest.raises(ManifestError) as missing:
            router.apply(router.manifests(Weights(100)))
        assert api.writes == []  # nothing applied
        kserve = dataclasses.replace(CHALLENGER, storage_secret="modelship-settings")
        isvc = KServeRouter(_api(tmp_path, url), "models", None, kserve)
        isvc.apply(isvc.manifests(Weights(100)))  # that one exists
    assert "Secret models/modelship-rclone does not exist" in missing.value.message
    assert "rclone" in missing.value.message


def test_a_stale_update_is_read_again_and_retried_then_fails_clearly(tmp_path: Path) -> None:
    with kube_api() as (url, api):
        router = KServeRouter(_api(tmp_path, url), "models", CHAMPION, CHALLENGER)
        router.apply(router.manifests(Weights(0)))
        api.concurrent_writes = 2  # two other writers get there first: two 409s, then it lands
        router.set_weights(Weights(10))
        assert api.conflicts == 2 and router.get_weights() == Weights(10)
        api.concurrent_writes = 10  # a writer that never stops
        with pytest.raises(KubernetesError) as stuck:
            router.set_weights(Weights(50))
        api.concurrent_writes = 0
        assert router.get_weights() == Weights(10)  # nothing written blind
    assert stuck.value.status == 409 and "changed under every one of 3 tries" in stuck.value.message


def test_a_manifest_the_clusters_crd_schema_refuses_is_never_sent(tmp_path: Path) -> None:
    # checked against the installed CRD's own schema, read from the API server, before any
    # object is written: none of the pair goes half-way
    crds.require()
    with kube_api() as (url, api):
        router = SeldonRouter(_api(tmp_path, url), "models", CHAMPION, CHALLENGER)
        manifests = router.manifests(Weights(0))
        manifests[-1]["spec"]["candidatez"] = manifests[-1]["spec"].pop("candidates")  # misspelt
        with pytest.raises(ManifestError) as refused:  # bad input: exit 2
            router.apply(manifests)
        assert api.writes == [] and "experiments.mlops.seldon.io" in api.crd_reads
    assert "nothing was sent" in refused.value.message and "candidatez" in refused.value.message
    assert "--dry-run" in (refused.value.hint or "")


def test_without_the_right_to_read_crds_the_api_servers_own_check_still_refuses(
    tmp_path: Path,
) -> None:
    # a namespaced Role cannot grant reading CRDs (cluster-scoped): then the API server's 422,
    # named, with the fix
    crds.require()
    api = KubeApi()
    api.crds_readable = False
    with kube_api(api) as (url, _):
        router = KServeRouter(_api(tmp_path, url), "models", None, CHALLENGER)
        manifest = router.manifests(Weights(100))[0]
        manifest["spec"]["predictor"]["canaryTrafficPercentage"] = 10  # misspelt
        with pytest.raises(KubernetesError) as refused:
            router.apply([manifest])
    assert refused.value.status == 422 and "canaryTrafficPercentage" in refused.value.message
    assert "--dry-run" in (refused.value.hint or "")


@pytest.mark.parametrize("target", ["kserve", "seldon"])
def test_a_controller_killed_mid_canary_resumes_and_the_cluster_follows(
    tmp_path: Path, target: str
) -> None:
    # the first controller sets step 1 and dies; a second (another pod) finds the rollout in
    # its store, puts the step's weights back on the cluster, and takes it to promotion
    from modelship.components.rollout.stage import kubernetes_controller
    from modelship.components.rollout.state import Phase, StatusStore
    from modelship.components.targets.kubernetes import router_for
    from tests.servers.controller import FileRegistry
    from tests.test_rollout_k8s import FakePrometheus, policy

    fake = FakePrometheus(["3", "4"], model="bc")
    try:
        with kube_api() as (url, api):
            pol = policy(target, fake.url)
            store = StatusStore(tmp_path / "store", "bc")
            book = FileRegistry(tmp_path / "registry.log")
            first = kubernetes_controller(pol, CHAMPION, CHALLENGER, store, book,
                                          _api(tmp_path, url))  # fmt: skip
            status = first.begin("bc", "3", "4", "h")
            while status.weight == 0:
                status = first.tick(status).status
            assert status.weight == 20 and not status.phase.is_terminal
            # what the cluster says, read through the API stand-in by a router of its own
            observer = router_for(target, _api(tmp_path, url), "models", CHAMPION, CHALLENGER)
            assert observer.get_weights().challenger == 20
            # the pod dies; meanwhile someone resets the split by hand
            observer.set_weights(Weights(0))
            second = kubernetes_controller(pol, CHAMPION, CHALLENGER, store, book,
                                           _api(tmp_path, url))  # fmt: skip
            resumed = second.begin("bc", "3", "4", "h")
            assert resumed.events[-1].endswith("resumed") and resumed.weight == 20
            assert observer.get_weights().challenger == 20  # back as it was
            done = second.run(resumed)
            assert done.phase is Phase.PROMOTED, done.reason
            if target == "kserve":
                isvc = next(iter(api.find("InferenceService")))
                assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
            else:  # the Experiment's default is the challenger's one-step Pipeline, alone
                (experiment,) = api.find("Experiment")
                assert [c["weight"] for c in experiment["spec"]["candidates"]] == [100]
                assert experiment["spec"]["candidates"][0]["name"].startswith("bc-v4")
    finally:
        fake.server.shutdown()
