"""The package stage end to end: deploy builds a Bento, `bentoml serve` answers from it.

A real SQLite MLflow store, the real pipeline (kfp.local), a real `bentoml serve` process per
scenario and real HTTP. The image is covered by tests/test_image.py.
"""

from __future__ import annotations

import json
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from modelship.bentos.inference_log import read
from modelship.components.contract import StageContext, run_stage
from modelship.components.package import image as image_mod
from modelship.components.package import stage as package_stage
from modelship.core.events import NO_EVENTS
from modelship.core.ports import free_port
from modelship.core.settings import Settings
from modelship.core.verdict import Check, Verdict
from tests.servers.prometheus import AVAILABLE as PROMETHEUS
from tests.support import (
    MODELSHIP,
    background,
    bento_env,
    bento_server,
    cli,
    deploy_json,
    register_forest,
    version_tags,
    wait_http,
)

MODEL = "breast-cancer"


@pytest.fixture(scope="module")
def deployed(home: Path, settings: Settings, data: Any) -> dict[str, Any]:
    version = register_forest(settings, MODEL, data)
    code, summary, err = deploy_json(home, MODEL, "--version", version)
    assert code == 0, err
    assert summary is not None
    stage = next(s for s in summary["stages"] if s["name"] == "package")
    checks = {c["name"]: c for c in stage["checks"]}
    return {"version": version, "summary": summary, "stage": stage, "checks": checks,
            "tag": checks["package.bento"]["measured"]}  # fmt: skip


@pytest.fixture(scope="module")
def server(home: Path, deployed: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with bento_server(home, deployed["tag"], log) as (url, _):
        yield url


def _post(url: str, body: Any, **kw: Any) -> requests.Response:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return requests.post(f"{url}/predict", data=data, timeout=30,
                         headers={"content-type": "application/json", **kw.pop("headers", {})}, **kw)  # fmt: skip


@pytest.mark.slow
def test_deploy_builds_a_bento_of_the_chosen_variant(home: Path, deployed: dict[str, Any]) -> None:
    assert deployed["stage"]["passed"] and not deployed["stage"]["skipped"]
    tag = deployed["tag"]
    name, version = tag.split(":")
    assert name == "modelship-breast-cancer" and version.startswith(f"v{deployed['version']}-")
    bento = home / "bentoml" / "bentos" / name / version
    serving = json.loads((bento / "src" / "serving.json").read_text())
    assert serving["model_digest"] == deployed["summary"]["digest"]
    assert serving["variant"] == "fp32" and (bento / "src" / "model" / "model.onnx").is_file()
    tags = version_tags(MODEL)[deployed["version"]]
    assert tags["modelship.bento"] == tag
    image = deployed["checks"]["package.image"]
    assert image["skipped"] and "package.image is never" in image["reason"]


@pytest.mark.slow
def test_predictions_are_the_packaged_models_in_every_input_shape(server: str, data: Any) -> None:
    import mlflow.pyfunc

    _, _, _, validation = data
    features = validation.drop(columns=["target"]).head(40)
    records = _post(server, {"inputs": features.to_dict(orient="records")})
    columns = _post(server, {"inputs": features.to_dict(orient="list")})
    rows = _post(server, {"inputs": features.to_numpy().tolist()})
    assert records.status_code == columns.status_code == rows.status_code == 200
    assert records.json() == columns.json() == rows.json()
    native = mlflow.pyfunc.load_model(f"models:/{MODEL}/1").predict(features)
    got = [r["prediction"] for r in records.json()]
    assert got == [int(v) for v in native]
    probabilities = np.array([r["probabilities"] for r in records.json()])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_response_names_the_model_version_digest_and_request(
    server: str, deployed: dict[str, Any], data: Any
) -> None:
    row = data[3].drop(columns=["target"]).head(1).to_dict(orient="records")
    answer = _post(server, {"inputs": row}, headers={"x-request-id": "abc-123"})
    assert answer.status_code == 200
    assert answer.headers["x-modelship-model"] == f"{MODEL}/{deployed['version']}"
    assert answer.headers["x-modelship-digest"] == deployed["summary"]["digest"]
    assert answer.headers["x-request-id"] == "abc-123"
    assert _post(server, {"inputs": row}).headers["x-request-id"] != "abc-123"


def _row(data: Any) -> dict[str, float]:
    row: dict[str, float] = data[3].drop(columns=["target"]).iloc[0].to_dict()
    return row


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        (lambda r: b'{"inputs": [{"mean radius": 1.0,', 400, "not valid JSON"),
        (lambda r: {"inputs": [{**r, "radius": 1.0}]}, 400, "unknown column 'radius'"),
        (lambda r: {"inputs": [{k: v for k, v in r.items() if k != "mean area"}]}, 400,
         "missing column 'mean area'"),
        (lambda r: {"inputs": [{**r, "mean area": "large"}]}, 400, "send a number"),
        (lambda r: {"records": [r]}, 400, "Field required"),
        (lambda r: {"inputs": [r] * 1025}, 400, "more than the limit of 1024"),
        (lambda r: {"inputs": [list(r.values())] * 5000}, 413, "package.max_body_bytes"),
        (lambda r: json.dumps({"inputs": [{**r, "mean area": float("nan")}]}), 400,
         "send finite values"),
        (lambda r: json.dumps({"inputs": [{**r, "mean area": float("inf")}]}), 400,
         "send finite values"),
    ],
    ids=["malformed-json", "unknown-field", "missing-field", "wrong-type", "wrong-key",
         "too-many-rows", "oversized-body", "nan", "inf"],
)  # fmt: skip
def test_bad_requests_get_a_4xx_that_names_the_fault(
    server: str, data: Any, make: Any, status: int, message: str
) -> None:
    answer = _post(server, make(_row(data)))
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    assert _post(server, {"inputs": [_row(data)]}).status_code == 200, "one bad request hurt others"


@pytest.mark.slow
def test_metrics_count_requests_latency_batches_and_errors(server: str, data: Any) -> None:
    for _ in range(5):
        _post(server, {"inputs": [_row(data)]})
    _post(server, b"{")
    text = requests.get(f"{server}/metrics", timeout=10).text
    for name in (
        'modelship_requests_total{outcome="ok"',
        'modelship_requests_total{outcome="http_400"',
        "modelship_request_seconds_bucket",
        "modelship_batch_rows_bucket",
        "modelship_model_seconds_bucket",
    ):
        assert name in text, f"{name} missing from /metrics"


@pytest.mark.slow
def test_every_request_under_concurrency_reaches_the_log_by_sigterm(
    home: Path, deployed: dict[str, Any], data: Any, tmp_path: Path
) -> None:
    rows = data[3].drop(columns=["target"]).to_dict(orient="records")
    n = 400
    log_root = tmp_path / "inference"
    with bento_server(
        home, deployed["tag"], tmp_path / "serve.log", MODELSHIP_INFERENCE_LOG=str(log_root)
    ) as (url, proc):

        def send(i: int) -> int:
            body = {"inputs": [rows[i % len(rows)]]}
            return _post(url, body, headers={"x-request-id": f"r{i}"}).status_code

        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(send, range(n))) == {200}
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    table = read(str(log_root / MODEL / f"v{deployed['version']}"))
    assert table.num_rows == n
    assert sorted(table.column("request_id").to_pylist()) == sorted(f"r{i}" for i in range(n))
    logged = table.to_pandas().set_index("request_id").loc["r7"]
    expected = rows[7]
    assert all(np.isclose(logged[k], v, rtol=1e-6) for k, v in expected.items())
    assert logged["prediction"] in (0, 1)


@pytest.mark.slow
def test_a_bento_whose_model_changed_is_never_ready_and_says_why(
    home: Path, deployed: dict[str, Any], tmp_path: Path, data: Any
) -> None:
    copy = tmp_path / "home"
    shutil.copytree(home / "bentoml", copy / "bentoml")
    name, version = deployed["tag"].split(":")
    onnx = copy / "bentoml" / "bentos" / name / version / "src" / "model" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-10] + b"0123456789")
    with bento_server(copy, deployed["tag"], tmp_path / "serve.log", ready=False) as (url, _):
        ready = requests.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503
        answer = _post(url, {"inputs": [_row(data)]})
        assert answer.status_code == 503
        assert "differ from the ones it was built with" in answer.json()["error"]


def test_package_does_not_run_without_a_passing_optimize_verdict(tmp_path: Path) -> None:
    failed = Verdict.from_checks(
        "optimize", [Check(name="optimize.selection", kind="selection", passed=False, reason="x")]
    )
    ctx = StageContext(ref=None, policy=None, registry=None, deployment=None,  # type: ignore[arg-type]
                       workdir=tmp_path, settings=None)  # type: ignore[arg-type]  # fmt: skip
    inputs = package_stage.PackageInputs(tmp_path, "", tmp_path, tmp_path)
    verdict = run_stage(package_stage.STAGE, ctx, inputs, failed)
    assert verdict.skipped and not verdict.passed


class _NoEngine:
    name = "nothing"

    def available(self) -> str | None:
        return "not installed here"


def test_no_builder_skips_the_image_unless_the_policy_demands_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(image_mod, "BUILDERS", {"nothing": _NoEngine})
    auto, image = package_stage._image_check(None, "auto", "", tmp_path, NO_EVENTS)  # type: ignore[arg-type]
    assert auto.passed and auto.skipped and image is None
    assert auto.reason.startswith("image: skipped (no builder: nothing: not installed here")
    always, _ = package_stage._image_check(None, "always", "", tmp_path, NO_EVENTS)  # type: ignore[arg-type]
    assert not always.passed and "required by the policy" in always.reason


@pytest.mark.slow
def test_modelship_serve_starts_the_versions_bento(
    home: Path, deployed: dict[str, Any], data: Any, tmp_path: Path
) -> None:
    port = free_port()
    cmd = [MODELSHIP, "serve", MODEL, "--version", deployed["version"], "--port", str(port)]
    log = tmp_path / "serve.log"
    with background(cmd, log, bento_env(home)) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz", proc, log)
        assert _post(url, {"inputs": [_row(data)]}).status_code == 200


@pytest.mark.slow
def test_modelship_serve_without_a_bento_says_what_to_run(home: Path, deployed: Any) -> None:
    proc = cli(home, "serve", MODEL, "--version", "99")
    assert proc.returncode == 2
    proc = cli(home, "serve", "never-deployed")  # no champion to serve
    assert proc.returncode == 2 and "no champion" in proc.stderr


@pytest.mark.slow
def test_a_model_without_onnx_is_packaged_and_served_natively(
    home: Path, settings: Settings, deployed: Any, data: Any, tmp_path: Path
) -> None:
    """optimize.on_conversion_failure: native -- the Bento serves the MLflow model itself."""
    from sklearn.kernel_ridge import KernelRidge

    from modelship.components.optimize import stage as optimize_stage
    from modelship.policies.loader import load_policy
    from modelship.policies.schema import Policy
    from modelship.registry.client import Registry
    from tests.support import register, stage_context

    x, y, ref_data, val = data
    model = KernelRidge().fit(x, y)
    version = register(settings, MODEL, model, x, ref_data, val)
    raw = load_policy(MODEL).policy.model_dump(by_alias=True)
    raw["optimize"]["on_conversion_failure"] = "native"
    policy = Policy.model_validate(raw)
    registry = Registry()
    ref = registry.resolve(MODEL, version=version)
    model_dir, digest = registry.checked_download(ref, tmp_path / "model")
    passed = Verdict(stage="validate", passed=True, reason="all checks passed")
    optimized = run_stage(
        optimize_stage.STAGE, stage_context(settings, ref, policy, tmp_path / "opt-work", registry),
        optimize_stage.OptimizeInputs(model_dir, digest, tmp_path / "optimized"), passed,
    )  # fmt: skip
    assert settings.bentoml_home == home / "bentoml"
    verdict = run_stage(
        package_stage.STAGE, stage_context(settings, ref, policy, tmp_path / "pkg-work", registry),
        package_stage.PackageInputs(model_dir, digest, tmp_path / "optimized", tmp_path / "packaged"),
        optimized,
    )  # fmt: skip
    assert verdict.passed, verdict.reason
    out = json.loads((tmp_path / "packaged" / "package.json").read_text())
    assert out["serving"]["variant"] == "native"
    features = val.drop(columns=["target"]).head(5)
    with bento_server(home, out["bento"], tmp_path / "serve.log") as (url, _):
        answer = _post(url, {"inputs": features.to_dict(orient="records")})
    assert answer.status_code == 200, answer.text
    got = [r["prediction"] for r in answer.json()]
    np.testing.assert_allclose(got, model.predict(features), rtol=1e-5)


@pytest.mark.slow
def test_bentomls_own_request_path_answers_the_same_and_names_faults(
    home: Path, deployed: dict[str, Any], data: Any, tmp_path: Path
) -> None:
    """package.server: bentoml -- BentoML's API and dispatcher instead of the fast path."""
    copy = tmp_path / "home"
    shutil.copytree(home / "bentoml", copy / "bentoml")
    name, version = deployed["tag"].split(":")
    config = copy / "bentoml" / "bentos" / name / version / "src" / "serving.json"
    serving = json.loads(config.read_text())
    serving["server"] = "bentoml"
    config.write_text(json.dumps(serving))
    rows = data[3].drop(columns=["target"]).head(3).to_dict(orient="records")
    with bento_server(copy, deployed["tag"], tmp_path / "serve.log") as (url, _):
        answer = _post(url, {"inputs": rows})
        bad = _post(url, {"inputs": [{**rows[0], "mean area": "large"}]})
    assert answer.status_code == 200 and len(answer.json()) == 3
    assert answer.headers["x-modelship-model"] == f"{MODEL}/{deployed['version']}"
    assert bad.status_code == 400 and "send a number" in bad.json()["error"]


@pytest.mark.slow
def test_the_bento_travels_through_mlflow_to_a_store_that_never_saw_it(
    home: Path, deployed: dict[str, Any], tmp_path: Path
) -> None:
    # another pod: an empty BentoML store, only MLflow shared
    from modelship.components.serving.bentostore import bento_digest, present_bento, store_path
    from modelship.components.serving.packaged import packaged_version
    from modelship.registry.client import Registry

    registry = Registry()
    packaged, _ = packaged_version(registry, registry.resolve(MODEL, version=deployed["version"]))
    assert packaged is not None and packaged.bento == deployed["tag"]
    run_id = deployed["summary"]["run_id"]
    assert packaged.bento_uri == f"runs:/{run_id}/bento/{deployed['tag'].replace(':', '-')}.bento"
    passed = bento_digest(store_path(home / "bentoml", deployed["tag"]))
    assert packaged.bento_digest == passed
    elsewhere = tmp_path / "pod-bentoml"
    path = present_bento(packaged, elsewhere)
    assert path == store_path(elsewhere, deployed["tag"])
    assert bento_digest(path) == passed  # byte for byte what passed the gates
    # a store holding other files under the same tag gets the Bento that passed instead
    (path / "src" / "serving.json").write_text("{}")
    assert bento_digest(present_bento(packaged, elsewhere)) == passed


@pytest.mark.slow
def test_a_changed_bento_in_mlflow_is_refused_and_never_lands_in_the_store(
    home: Path, deployed: dict[str, Any], tmp_path: Path
) -> None:
    import tarfile

    import mlflow

    from modelship.components.serving.bentostore import present_bento, store_path
    from modelship.components.serving.packaged import packaged_version
    from modelship.core.errors import PackagingError
    from modelship.registry.client import Registry

    registry = Registry()
    packaged, _ = packaged_version(registry, registry.resolve(MODEL, version=deployed["version"]))
    assert packaged is not None and packaged.bento_uri
    archive = Path(mlflow.artifacts.download_artifacts(packaged.bento_uri, dst_path=str(tmp_path)))
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    (unpacked / "src" / "serving.json").write_text("{}")  # someone edits the stored artifact
    forged = tmp_path / "forged.bento"
    head = archive.read_bytes()[:6]
    mode = "w:xz" if head == b"\xfd7zXZ\x00" else "w:gz" if head[:2] == b"\x1f\x8b" else "w"
    with tarfile.open(forged, mode) as tar:  # type: ignore[call-overload]
        tar.add(unpacked, arcname=".")
    # the embedded store's copy of the artifact, as someone with write access could change it
    run_id, _, name = packaged.bento_uri.removeprefix("runs:/").partition("/bento/")
    stored = Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "bento" / name
    assert stored.is_file()
    original = stored.read_bytes()
    try:
        stored.write_bytes(forged.read_bytes())
        with pytest.raises(PackagingError, match=r"not the .* that passed the gates"):
            present_bento(packaged, tmp_path / "pod-bentoml")
        assert not store_path(tmp_path / "pod-bentoml", deployed["tag"]).exists()
    finally:
        stored.write_bytes(original)


@pytest.mark.slow
@pytest.mark.skipif(not PROMETHEUS, reason="no prometheus (make image-tools installs Debian's)")
def test_the_bentos_metrics_answer_the_analysis_through_a_real_prometheus(
    home: Path, deployed: dict[str, Any], data: Any, tmp_path: Path
) -> None:
    # what KServe's scraping annotations hand to Prometheus: the Bento's own /metrics; the
    # analysis' PromQL runs on Prometheus' engine against what the real Bento counted. A
    # server of its own: the module's has met other servers of the same store by now
    from modelship.components.targets.prometheus import PrometheusMetrics
    from modelship.gateway.stats import Outcome
    from tests.servers.prometheus import prometheus, wait_for

    features = data[3].drop(columns=["target"]).head(3)
    version = deployed["version"]
    with bento_server(home, deployed["tag"], tmp_path / "serve.log") as (server, _):
        for _ in range(20):
            assert _post(server, {"inputs": features.to_dict(orient="records")}).status_code == 200
        assert _post(server, {"inputs": [[1.0]]}).status_code == 400  # a client error, counted
        with prometheus(tmp_path / "prom", [server.removeprefix("http://")]) as url:
            wait_for(url, f'sum(modelship_requests_total{{version="{version}"}})',
                     lambda rows: bool(rows) and float(rows[0]["value"][1]) >= 21)  # fmt: skip
            snap = PrometheusMetrics(url, {"champion": version, "challenger": version}).snapshot()
    live = snap["champion/live"]
    assert live["outcomes"][Outcome.OK] >= 20 and live["outcomes"][Outcome.CLIENT_ERROR] >= 1
    assert sum(live["latency"].values()) >= 20  # from the Bento's histogram buckets
