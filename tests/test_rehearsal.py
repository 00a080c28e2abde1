"""The cluster rehearsal (tests/rehearsal.py): the compiled deploy.yaml, each task in its own
pod, sharing only MLflow (a real server), S3 (a real S3 API), an image registry (a real one),
KFP's artifacts and a stand-in for the Kubernetes API (KServe's objects land there).

`make rehearse` runs this module alone.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelship.components.package.image import PIPELINE_IMAGE_ENV
from modelship.components.serving.bentostore import bento_digest, present_bento, store_path
from modelship.components.serving.packaged import packaged_version
from modelship.core.settings import SECRET_OPTIONAL, SECRET_REQUIRED, SETTINGS_SECRET_ENV
from modelship.core.tags import RUN_KFP, TAG_BENTO, TAG_BENTO_DIGEST, TAG_BENTO_URI
from modelship.pipelines.compile import PIPELINE_DIR, compile_all
from modelship.pipelines.submit import cluster_policy, deployment_outcome
from modelship.policies.loader import load_policy, policy_yaml
from modelship.registry.client import Registry
from tests.handoffs import hand_offs
from tests.rehearsal import (
    CREDENTIALS,
    Cluster,
    drop_store,
    image_registry,
    object_store,
    overlay_store,
    read_artifact,
    s3_keys,
    tracking_server,
)
from tests.servers.kubeapi import kube_api, write_kubeconfig
from tests.support import register_forest, settings_for, version_tags

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("buildah") is None or shutil.which("docker-registry") is None,
        reason="the rehearsal builds and pushes images: buildah and docker-registry "
        "(make image-tools installs them)",
    ),
]

MODEL = "breast-cancer"
DEPLOY = PIPELINE_DIR / "deploy.yaml"
#: the demo policy, rolled out on KServe: the image pushed to the registry (REGISTRY is filled
#: in), Prometheus where nothing answers (no pod serves here, so an analysis cannot run). The
#: rehearsal checks where each step runs and what it hands on, not how fast a server answers:
#: its servers run in container pods on two cores shared with the rest of the suite, where one
#: CI run saw a p99 of 170 ms (p50 1.4 ms) against the demo's SLO (100 ms then). So the SLO and the
#: slack against the champion are wide here; speed is the benchmarks' business
ON_CLUSTER = """\
package:
  image: always
  registry: REGISTRY/models
  inference_log: {uri: "s3://modelship/inference"}
loadtest:
  slo: {p99_ms: 2000}
  p99_regression_floor_ms: 2000
rollout:
  target: kserve
  mirror_share: 0
  analysis: {prediction_check: distribution}
  kubernetes: {namespace: models, prometheus_url: "http://127.0.0.1:9"}
"""
#: what every pod's environment may hold: nothing of this machine's but PATH and the node's
#: registries.conf
POD_KEYS = {"PATH", "HOME", "LANG", "CONTAINERS_REGISTRIES_CONF", SETTINGS_SECRET_ENV,
            PIPELINE_IMAGE_ENV, *SECRET_REQUIRED, *SECRET_OPTIONAL}  # fmt: skip
#: how the pods run (MODELSHIP_REHEARSAL_IMAGE, `make rehearse IMAGE=...`). Unset: each a
#: container of the pipeline image built from this checkout (`make pipeline-image`), pushed to
#: the rehearsal's registry and pulled from there by digest, as a cluster's nodes would; where
#: buildah's overlay driver cannot mount here, each a process instead (containers on the vfs
#: driver take a minute each to start). "process": processes. An image reference: containers
#: of that image, on whichever driver works.
PODS = os.environ.get("MODELSHIP_REHEARSAL_IMAGE") or ""
#: the image built from this checkout: a name the tests' image clean-up removes (conftest.py)
BUILT = "localhost/modelship-rehearsal:tests"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("servers")
    node = None if PODS == "process" else overlay_store(root / "node")
    source = PODS if PODS not in ("", "process") else None
    if PODS == "" and node is not None:
        source = _build_pipeline_image(root / "pipeline-image.log")
    with (
        object_store(root) as s3,
        tracking_server(root, s3) as mlflow_url,
        image_registry(root / "registry") as registry,
        kube_api() as (kube_url, kube),
    ):
        conf = str(root / "registry" / "registries.conf")
        deploy, monitor, image = DEPLOY, PIPELINE_DIR / "monitor.yaml", None
        if source:  # the pipeline as a cluster gets it: compiled against the pushed image
            image = _push_pipeline_image(source, registry, conf, root)
            deploy, monitor = compile_all(root / "compiled", image=image)[:2]
        try:
            yield {"s3": s3, "mlflow": mlflow_url, "registry": registry, "kube": kube,
                   "node": node if image else None, "image": image,
                   "kubeconfig": write_kubeconfig(root / "kubeconfig", kube_url, "models"),
                   "registries_conf": conf, "deploy": deploy, "monitor": monitor}  # fmt: skip
        finally:
            if node is not None:  # the node's copy of the image: gigabytes
                drop_store(node)


def _build_pipeline_image(log: Path) -> str:
    """`make pipeline-image` from this checkout, tagged ``BUILT``."""
    import subprocess

    with log.open("w") as out:
        made = subprocess.run(["make", "pipeline-image", f"PIPELINE_IMAGE={BUILT}"],
                              cwd=Path(__file__).resolve().parent.parent, stdout=out,
                              stderr=subprocess.STDOUT, timeout=1800, check=False)  # fmt: skip
    assert made.returncode == 0, f"make pipeline-image failed:\n{log.read_text()[-3000:]}"
    return BUILT


def _push_pipeline_image(image: str, registry: str, conf: str, root: Path) -> str:
    import subprocess

    from modelship.components.containers import BUILDAH

    digest_file = root / "pipeline-image.digest"
    subprocess.run(
        [*BUILDAH, "push", "--quiet", "--digestfile", str(digest_file), image,
         f"docker://{registry}/platform/modelship:rehearsal"],
        check=True, env={**os.environ, "CONTAINERS_REGISTRIES_CONF": conf}, timeout=1200,
    )  # fmt: skip
    return f"{registry}/platform/modelship@{digest_file.read_text().strip()}"


@pytest.fixture(scope="module")
def laptop(
    servers: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, data: Any
) -> Iterator[dict[str, Any]]:
    """The person's machine: registers v1 and v2 on the tracking server (artifacts to S3)."""
    mp = pytest.MonkeyPatch()
    for key, value in {**CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": servers["s3"]}.items():
        mp.setenv(key, value)
    mp.setenv("MLFLOW_TRACKING_URI", servers["mlflow"])
    settings = settings_for(tmp_path_factory.mktemp("laptop"), tracking_uri=servers["mlflow"])
    policy_file = tmp_path_factory.mktemp("policy") / "cluster.yaml"
    policy_file.write_text(ON_CLUSTER.replace("REGISTRY", servers["registry"]))
    yield {
        "settings": settings,
        "v1": register_forest(settings, MODEL, data),
        "v2": register_forest(settings, MODEL, data),
        "policy": cluster_policy(MODEL, policy_file, None),
    }
    mp.undo()


def _cluster(
    tmp_path: Path, servers: dict[str, Any], secret: dict[str, str] | None = None
) -> Cluster:
    """The rehearsal's cluster; its Secret by default: the tracking server's URI and the object
    store's endpoint and keys."""
    if secret is None:
        secret = {**CREDENTIALS, "MLFLOW_TRACKING_URI": servers["mlflow"],
                  "MLFLOW_S3_ENDPOINT_URL": servers["s3"]}  # fmt: skip
    return Cluster(
        tmp_path / "pods", secret,
        # a container of the pipeline image per pod (see PODS), or a process
        image=servers["image"],
        node_env={"CONTAINERS_REGISTRIES_CONF": servers["registries_conf"]},
        kubeconfig=servers["kubeconfig"], s3_url=servers["s3"], node_store=servers["node"],
    )  # fmt: skip


def test_a_first_version_deploys_with_every_step_in_its_own_pod(
    servers: dict[str, Any], laptop: dict[str, Any], tmp_path: Path
) -> None:
    cluster = _cluster(tmp_path, servers)
    (tmp_path / "pods").mkdir()
    task = cluster.run(servers["deploy"], {"model_name": MODEL, "version": laptop["v1"], "alias": "",
                                "policy_yaml": policy_yaml(laptop["policy"])})  # fmt: skip
    summary = json.loads(read_artifact(servers["s3"], task.output.uri))
    assert summary["outcome"] == "passed", cluster.logs()
    tasks = [p.task for p in cluster.pods]
    assert tasks == ["resolve_model", "validate_model", "optimize_model", "package_model",
                     "loadtest_model", "rollout_model", "conclude_deployment"]  # fmt: skip
    assert len({p.folder for p in cluster.pods}) == len(tasks)
    for pod in cluster.pods:
        assert set(pod.env) <= POD_KEYS, f"{pod.task} saw {set(pod.env) - POD_KEYS}"
    # the Bento: built in the package pod, exported to S3 through MLflow; any other machine
    # (here the laptop, into an empty store) imports it byte for byte. The load-test pod served
    # the pushed image instead (asserted below).
    tags = version_tags(MODEL)[laptop["v1"]]
    tag, digest = tags[TAG_BENTO], tags[TAG_BENTO_DIGEST]
    built = store_path(cluster.pod("package_model").folder / ".modelship" / "bentoml", tag)
    packaged, _ = packaged_version(Registry(), Registry().resolve(MODEL, version=laptop["v1"]))
    assert packaged is not None
    fetched = present_bento(packaged, tmp_path / "elsewhere")
    assert bento_digest(built) == digest == bento_digest(fetched)
    assert tags[TAG_BENTO_URI].startswith(f"runs:/{summary['run_id']}/bento/")
    assert any(k.endswith(f"/bento/{tag.replace(':', '-')}.bento") for k in s3_keys(servers["s3"]))
    # the submitting machine finds the outcome as `modelship submit` does: by the KFP run id
    from mlflow import MlflowClient

    run = MlflowClient(servers["mlflow"]).get_run(summary["run_id"])
    assert run.info.artifact_uri.startswith(f"s3://{BUCKET_PREFIX}")
    outcome, found = deployment_outcome(laptop["settings"], run.data.tags[RUN_KFP])
    assert outcome == "passed" and found["mlflow_run_id"] == summary["run_id"]
    assert MlflowClient(servers["mlflow"]).get_registered_model(MODEL).aliases == {
        "champion": laptop["v1"]
    }
    # the image: pushed by the package pod, recorded by digest, and the one KServe is told to
    # run for the first version, with all the traffic and the scraping annotations
    image = tags["modelship.image"]
    repository, digest = image.split("@")
    name = repository.removeprefix(servers["registry"] + "/")
    assert _manifest_digest(servers["registry"], name, tag.split(":")[1]) == digest
    (isvc,) = servers["kube"].find("InferenceService")
    assert isvc["metadata"]["namespace"] == "models"
    predictor = isvc["spec"]["predictor"]
    assert predictor["containers"][0]["image"] == image
    assert "canaryTrafficPercent" not in predictor
    assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert tags["modelship.k8s_objects"] == f"InferenceService/models/{isvc['metadata']['name']}"
    loadtest = next(s for s in summary["stages"] if s["name"] == "loadtest")
    if servers["image"] is None:  # a pod with buildah serves the pushed image itself
        assert any(f"image {image} ready" in c["reason"] for c in loadtest["checks"]), loadtest
    else:  # a container has none: the image is the pipeline image plus that very Bento
        assert tags["modelship.image"].startswith(f"{servers['registry']}/models/")
        package = next(s for s in summary["stages"] if s["name"] == "package")
        built_with = next(c for c in package["checks"] if c["name"] == "package.image")
        assert "built with layered" in built_with["reason"], built_with


def _manifest_digest(registry: str, name: str, tag: str) -> str:
    import requests

    answer = requests.head(
        f"http://{registry}/v2/{name}/manifests/{tag}", timeout=10,
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                 "application/vnd.docker.distribution.manifest.v2+json"},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    return str(answer.headers["Docker-Content-Digest"])


def test_a_candidate_is_load_tested_against_the_champions_image_and_its_canary_aborted(
    servers: dict[str, Any], laptop: dict[str, Any], tmp_path: Path
) -> None:
    # runs after the test above made v1 the champion: v2 is load-tested against it in a pod
    # that never saw either. Its KServe canary is applied to the API stand-in, but no pod
    # serves here, so Prometheus has nothing: every analysis errors, the canary is aborted
    # (rollout.analysis' consecutive_error_limit), and the champion stays.
    cluster = _cluster(tmp_path, servers)
    (tmp_path / "pods").mkdir()
    task = cluster.run(servers["deploy"], {"model_name": MODEL, "version": laptop["v2"], "alias": "",
                                "policy_yaml": policy_yaml(laptop["policy"])})  # fmt: skip
    summary = json.loads(read_artifact(servers["s3"], task.output.uri))
    assert summary["outcome"] == "rejected", cluster.logs()
    loadtest = cluster.pod("loadtest_model")
    assert loadtest.returncode == 0, cluster.logs()
    # the load-test task's verdict, in this run's part of the pipeline root in S3
    run_root = task.output.uri.rsplit("/", 2)[0]
    verdict = json.loads(read_artifact(servers["s3"], f"{run_root}/loadtest-model/verdict"))
    assert verdict["passed"], verdict
    champion_check = next(c for c in verdict["checks"] if "champion" in c["name"])
    assert not champion_check.get("skipped"), champion_check  # the champion really ran
    # both ran from their pushed images, pulled by digest: the champion's is the one v1's
    # package pod pushed
    reasons = " | ".join(c["reason"] for c in verdict["checks"])
    for version in ("v1", "v2"):
        if servers["image"] is None:  # else the pod has no buildah and serves the Bento
            assert (
                f"image {version_tags(MODEL)[laptop[version]]['modelship.image']} ready" in reasons
            )
    rollout = next(s for s in summary["stages"] if s["name"] == "rollout")
    assert not rollout["passed"] and "aborted" in rollout["reason"], rollout
    (isvc,) = servers["kube"].find("InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert (
        predictor["containers"][0]["image"] == version_tags(MODEL)[laptop["v2"]]["modelship.image"]
    )
    assert predictor["canaryTrafficPercent"] == 0  # aborted: the champion's revision serves all
    # the candidate's objects are on its version, for a person to find
    assert version_tags(MODEL)[laptop["v2"]]["modelship.k8s_objects"] == (
        f"InferenceService/models/{isvc['metadata']['name']}"
    )
    from mlflow import MlflowClient

    assert MlflowClient(servers["mlflow"]).get_registered_model(MODEL).aliases == {
        "champion": laptop["v1"]
    }


def test_on_seldon_the_onnx_lands_in_s3_in_tritons_layout_and_the_model_loads_it(
    servers: dict[str, Any], laptop: dict[str, Any], tmp_path: Path, data: Any
) -> None:
    # Seldon serves the optimized ONNX with Triton, not the Bento: the package pod uploads it
    # in Triton's layout through MLflow (to S3, which Seldon's rclone reads), the rollout pod
    # checks the S3 object's digest and applies the Model and Experiment
    import hashlib

    import boto3

    model = "seldon-model"
    version = register_forest(laptop["settings"], model, data)
    text = (ON_CLUSTER.replace("REGISTRY", servers["registry"])
            .replace("image: always", "image: never").replace("target: kserve", "target: seldon")
            .replace("namespace: models,", "namespace: models, kafka_bootstrap: 'kafka:9092',"))  # fmt: skip
    policy = load_policy(model, text=text).policy
    cluster = _cluster(tmp_path, servers)
    (tmp_path / "pods").mkdir()
    task = cluster.run(servers["deploy"], {"model_name": model, "version": version, "alias": "",
                                           "policy_yaml": policy_yaml(policy)})  # fmt: skip
    summary = json.loads(read_artifact(servers["s3"], task.output.uri))
    assert summary["outcome"] == "passed", cluster.logs()
    tags = version_tags(model)[version]
    uri = tags["modelship.triton_uri"]
    assert uri.startswith(f"s3://{BUCKET_PREFIX}") and uri.endswith(f"/triton/{model}-v{version}")
    prefix = uri.removeprefix("s3://modelship/")
    assert sorted(k.removeprefix(prefix + "/") for k in s3_keys(servers["s3"], prefix)) == [
        "1/model.onnx",
        "config.pbtxt",
    ]
    s3 = boto3.client("s3", endpoint_url=servers["s3"], **_boto())
    onnx_bytes = s3.get_object(Bucket="modelship", Key=f"{prefix}/1/model.onnx")["Body"].read()
    assert tags["modelship.triton_digest"] == "sha256:" + hashlib.sha256(onnx_bytes).hexdigest()
    config = s3.get_object(Bucket="modelship", Key=f"{prefix}/config.pbtxt")["Body"].read()
    assert b'backend: "onnxruntime"' in config and b"TYPE_INT64" in config  # the label
    (seldon_model,) = servers["kube"].find("Model")
    assert seldon_model["spec"]["storageUri"] == uri
    assert seldon_model["spec"]["requirements"] == ["onnx"]
    assert seldon_model["spec"]["secretName"] == "modelship-rclone"
    (pipeline,) = servers["kube"].find("Pipeline")  # Seldon records its traffic in Kafka
    assert pipeline["spec"]["steps"] == [{"name": seldon_model["metadata"]["name"]}]
    (experiment,) = servers["kube"].find("Experiment")
    assert experiment["spec"]["default"] == pipeline["metadata"]["name"]
    assert experiment["spec"]["resourceType"] == "pipeline"


def _boto() -> dict[str, str]:
    return {"aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "region_name": CREDENTIALS["AWS_DEFAULT_REGION"]}  # fmt: skip


def test_the_monitor_pipeline_judges_the_champions_log_in_the_object_store(
    servers: dict[str, Any], laptop: dict[str, Any], tmp_path: Path, data: Any
) -> None:
    # after the first test, v1 serves on KServe and its Bento writes its inference log to S3:
    # here that log is written as the Bento writes it (Parquet parts), drifted; the compiled
    # monitor.yaml runs in its own pod, reads it from S3, finds the drift and alerts (v1 has no
    # previous champion to roll back to)
    import uuid

    import numpy as np
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    reference = data[2].drop(columns=["target"])
    drifted = reference.sample(450, replace=True, random_state=5).reset_index(drop=True) * 1.6
    start_us = 1_900_000_000_000_000
    table = pa.table({
        **{c: pa.array(drifted[c].to_numpy(np.float32)) for c in drifted},
        "request_id": pa.array([uuid.uuid4().hex for _ in range(len(drifted))]),
        "timestamp": pa.array([start_us + i * 1000 for i in range(len(drifted))],
                              pa.timestamp("us", tz="UTC")),
        "prediction": pa.array(np.zeros(len(drifted), dtype=np.int64)),
    })  # fmt: skip
    host = servers["s3"].removeprefix("http://")
    s3 = pafs.S3FileSystem(endpoint_override=host, scheme="http",
                           access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                           secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region="us-east-1")  # fmt: skip
    pq.write_table(table, f"modelship/inference/{MODEL}/v{laptop['v1']}/part-000001.parquet",
                   filesystem=s3)  # fmt: skip
    text = ON_CLUSTER.replace("REGISTRY", servers["registry"]) + (
        "monitor: {window: {rows: 200}, min_rows: 100, consecutive_windows: 1, action: alert,"
        " cooldown_s: 0}\n"
    )
    policy = load_policy(MODEL, text=text).policy
    cluster = _cluster(tmp_path, servers)
    (tmp_path / "pods").mkdir()
    task = cluster.run(
        servers["monitor"], {"model_name": MODEL, "policy_yaml": policy_yaml(policy)}
    )
    report = json.loads(read_artifact(servers["s3"], task.output.uri))
    assert [p.task for p in cluster.pods] == ["monitor_model"], cluster.logs()
    assert set(cluster.pods[0].env) <= POD_KEYS
    assert [w["outcome"] for w in report["windows"]] == ["drift", "drift"], cluster.logs()
    assert report["actions"] and report["waiting_rows"] == 50


def test_a_local_rollout_is_refused_in_the_first_pod_and_nothing_is_written(
    servers: dict[str, Any], laptop: dict[str, Any], tmp_path: Path
) -> None:
    text = ON_CLUSTER.replace("REGISTRY", servers["registry"])
    local = load_policy(MODEL, text=text.replace("target: kserve", "target: local")).policy
    cluster = _cluster(tmp_path, servers)
    (tmp_path / "pods").mkdir()
    with pytest.raises(RuntimeError):
        cluster.run(servers["deploy"], {"model_name": MODEL, "version": laptop["v2"], "alias": "",
                             "policy_yaml": policy_yaml(local)})  # fmt: skip
    assert [p.task for p in cluster.pods] == ["resolve_model"]
    log = (cluster.pods[0].folder / "pod.log").read_text()
    assert "rollout.target is local" in log and "set rollout.target: seldon or kserve" in log


def test_a_secret_without_the_tracking_uri_fails_the_pod_naming_the_key(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, {**CREDENTIALS})
    with pytest.raises(AssertionError, match="couldn't find key MLFLOW_TRACKING_URI"):
        cluster.secret_env(DEPLOY)


def test_an_artifact_goes_through_the_object_store_and_a_path_from_another_pod_is_not_there(
    servers: dict[str, Any], tmp_path: Path
) -> None:
    from kfp import compiler

    package = tmp_path / "hand-offs.yaml"
    compiler.Compiler().compile(hand_offs, str(package))
    cluster = _cluster(tmp_path, servers)
    task = cluster.run(package, {"by_path": False})
    # the reader got the note at /s3/..., downloaded there from the pipeline root in S3
    seen, text = task.output.split(" ", 1)
    assert text == "from the first pod" and seen.startswith("/s3/modelship/pipeline-root/")
    assert seen.removeprefix("/s3/modelship/") in s3_keys(servers["s3"], "pipeline-root/")
    # kfp.local's own folder kept only the launcher's metadata, never an artifact
    kept = {p.name for p in (tmp_path / "pods" / "pipeline-root").rglob("*") if p.is_file()}
    assert kept == {"executor_output.json"}, kept
    # the same note, read at the path the writing pod returned: that pod's files are gone
    cluster = _cluster(tmp_path / "by-path", servers)
    with pytest.raises(RuntimeError):
        cluster.run(package, {"by_path": True})
    assert [(p.task, p.returncode) for p in cluster.pods] == [("write_note", 0), ("read_note", 1)]
    assert "FileNotFoundError" in (cluster.pod("read_note").folder / "pod.log").read_text()


def test_with_an_mlflow_that_proxies_artifacts_the_pods_need_only_its_uri(
    servers: dict[str, Any], tmp_path: Path, data: Any
) -> None:
    # the other way to run MLflow for a cluster (docs/kubernetes.md, step 1): the server reads
    # and writes the bucket itself, so the Secret holds the tracking URI and nothing of S3. A
    # first version deploys on KServe; its Bento reaches S3 through the server. (Last in this
    # module: it points this process' MLflow at that server, and puts it back.)
    import mlflow
    from mlflow import MlflowClient

    model = "proxied-model"
    policy = load_policy(model, text=ON_CLUSTER.replace("REGISTRY", servers["registry"])).policy
    with tracking_server(tmp_path, servers["s3"], proxied=True) as proxied:
        try:
            version = register_forest(settings_for(tmp_path / "laptop", tracking_uri=proxied),
                                      model, data)  # fmt: skip
            cluster = _cluster(tmp_path, servers, secret={"MLFLOW_TRACKING_URI": proxied})
            task = cluster.run(servers["deploy"], {"model_name": model, "version": version,
                                                   "alias": "", "policy_yaml": policy_yaml(policy)})  # fmt: skip
            summary = json.loads(read_artifact(servers["s3"], task.output.uri))
            assert summary["outcome"] == "passed", cluster.logs()
            for pod in cluster.pods:
                assert not {k for k in pod.env if k.startswith(("AWS_", "MLFLOW_S3"))}, pod.env
            client = MlflowClient(proxied)
            run = client.get_run(summary["run_id"])
            assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
            tag = client.get_model_version(model, version).tags[TAG_BENTO]
            bento = f"/bento/{tag.replace(':', '-')}.bento"
            assert any(k.startswith("proxied/") and k.endswith(bento)
                       for k in s3_keys(servers["s3"], "proxied/"))  # fmt: skip
            assert client.get_registered_model(model).aliases == {"champion": version}
            isvc = next(o for o in servers["kube"].find("InferenceService")
                        if o["metadata"]["labels"]["app.kubernetes.io/name"] == model)  # fmt: skip
            image = client.get_model_version(model, version).tags["modelship.image"]
            assert isvc["spec"]["predictor"]["containers"][0]["image"] == image
        finally:
            mlflow.set_tracking_uri(servers["mlflow"])


BUCKET_PREFIX = "modelship/mlflow/"
