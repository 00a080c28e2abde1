"""The same controller driving KServe and Seldon Core v2: a fake cluster API (no cluster runs
here), and a real HTTP server speaking Prometheus' query API with the services' own metrics."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelship.components.rollout.stage import kubernetes_controller
from modelship.components.rollout.state import Phase, StatusStore
from modelship.components.targets.cluster import Deployable
from modelship.components.targets.prometheus import PrometheusMetrics
from modelship.policies.schema import Policy
from tests.servers.controller import FileRegistry
from tests.servers.prometheus import AVAILABLE as PROMETHEUS
from tests.test_kubernetes import FakeCustomObjects


class FakePrometheus:
    """Answers the two queries the metric source sends; traffic grows with every query."""

    def __init__(self, versions: list[str], challenger_errors: float = 0.0,
                 model: str = "m") -> None:  # fmt: skip
        self.versions, self.model = versions, model
        self.challenger_errors = challenger_errors
        self.served = dict.fromkeys(versions, 0)
        self.queries: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["query"][0]
                outer.queries.append(query)
                body = json.dumps({"status": "success",
                                   "data": {"resultType": "vector", "result": outer.answer(query)}})  # fmt: skip
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, query: str) -> list[dict[str, Any]]:
        rows = []
        if "seldon_model_infer" in query:  # Seldon's agent series, by Model name
            return self.seldon(query)
        if query.startswith("sum by (version, outcome)"):
            for v in self.versions:
                self.served[v] += 200
            for i, v in enumerate(self.versions):
                bad = int(self.served[v] * self.challenger_errors) if i == 1 else 0
                for outcome, n in (("ok", self.served[v] - bad), ("http_500", bad)):
                    rows.append({"metric": {"version": v, "outcome": outcome},
                                 "value": [0, str(n)]})  # fmt: skip
        else:
            for v in self.versions:
                n = self.served[v]
                for le, share in (("0.005", 0.9), ("0.01", 1.0), ("+Inf", 1.0)):
                    rows.append({"metric": {"version": v, "le": le},
                                 "value": [0, str(int(n * share))]})  # fmt: skip
        return rows

    def seldon(self, query: str) -> list[dict[str, Any]]:
        """``seldon_model_infer_total`` by model and code (REST: the HTTP status), and
        ``seldon_model_infer_seconds_total`` by model: 4 ms a request."""
        rows = []
        if query.startswith("sum by (model, code)"):
            for v in self.versions:
                self.served[v] += 200
            for i, v in enumerate(self.versions):
                bad = int(self.served[v] * self.challenger_errors) if i == 1 else 0
                for code, n in (("200", self.served[v] - bad), ("500", bad)):
                    rows.append({"metric": {"model": f"{self.model}-v{v}", "code": code},
                                 "value": [0, str(n)]})  # fmt: skip
        else:
            for v in self.versions:
                rows.append({"metric": {"model": f"{self.model}-v{v}"},
                             "value": [0, str(self.served[v] * 0.004)]})  # fmt: skip
        return rows


@pytest.fixture()
def prometheus() -> Iterator[FakePrometheus]:
    p = FakePrometheus(["1", "2"])
    yield p
    p.server.shutdown()


def policy(target: str, url: str) -> Policy:
    return Policy.model_validate({"rollout": {
        "target": target, "kubernetes": {"namespace": "models", "prometheus_url": url,
                                         "selector": 'namespace="models"'},
        "steps": [{"weight": 20, "pause_s": 0.1}, {"weight": 100, "pause_s": 0}],
        # the pairs come from modelship's gateway: on a cluster, the distributions are compared
        "mirror_share": 0, "analysis": {"min_requests": 50, "prediction_check": "distribution"},
        "tick_s": 0.05}})  # fmt: skip


CHAMPION = Deployable(
    "m", "1", image="registry.local/m@sha256:" + "1" * 64, storage_uri="s3://models/m/1"
)
CHALLENGER = Deployable(
    "m", "2", image="registry.local/m@sha256:" + "2" * 64, storage_uri="s3://models/m/2"
)


def test_the_controller_promotes_on_kserve(prometheus: FakePrometheus, tmp_path: Path) -> None:
    api = FakeCustomObjects()
    book = FileRegistry(tmp_path / "registry.log")
    controller = kubernetes_controller(policy("kserve", prometheus.url), CHAMPION, CHALLENGER,
                                       StatusStore(tmp_path, "m"), book, api)  # fmt: skip
    status = controller.run(controller.begin("m", "1", "2", "h"))
    assert status.phase is Phase.PROMOTED, status.reason
    isvc = api.one("InferenceService")
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]  # the challenger took over
    assert str(CHALLENGER.image) in json.dumps(isvc["spec"]["predictor"])
    patched = [c for c in api.calls if c[0] == "patch"]
    assert len(patched) >= 3  # weight 20, weight 100, promotion
    assert all('namespace="models"' in q and 'version=~"1|2"' in q for q in prometheus.queries)
    assert [a.outcome for a in status.analyses] == ["successful", "successful"]
    assert (tmp_path / "registry.log").read_text().split()[-2:] == ["promoted", "2"]


def test_errors_seen_in_prometheus_abort_on_seldon(tmp_path: Path) -> None:
    failing = FakePrometheus(["1", "2"], challenger_errors=0.2)
    try:
        api = FakeCustomObjects()
        book = FileRegistry(tmp_path / "registry.log")
        controller = kubernetes_controller(policy("seldon", failing.url), CHAMPION, CHALLENGER,
                                           StatusStore(tmp_path, "m"), book, api)  # fmt: skip
        status = controller.run(controller.begin("m", "1", "2", "h"))
    finally:
        failing.server.shutdown()
    assert status.phase is Phase.ABORTED and "error rate 20.00%" in status.reason
    # read from Seldon's own series by Model name, not the Bento's (Triton serves there)
    assert failing.queries and all("seldon_model_infer" in q for q in failing.queries)
    assert all('model=~"m-v1|m-v2"' in q and 'namespace="models"' in q for q in failing.queries)
    experiment = api.one("Experiment")
    assert experiment["spec"]["candidates"] == [{"name": "m-v1-pipeline", "weight": 100}]
    assert (tmp_path / "registry.log").read_text().startswith("started 2\nrolled_back 2")


def test_seldon_latency_is_each_models_mean_and_codes_become_outcomes() -> None:
    from modelship.components.targets.prometheus import SeldonMetrics, seldon_outcome
    from modelship.core.histogram import LatencyHistogram
    from modelship.gateway.stats import Outcome

    fake = FakePrometheus(["1", "2"], challenger_errors=0.1)
    try:
        metrics = SeldonMetrics(fake.url, {"champion": "m-v1", "challenger": "m-v2"},
                                {"champion": "1", "challenger": "2"})  # fmt: skip
        snap = metrics.snapshot()
    finally:
        fake.server.shutdown()
    challenger = snap["challenger/live"]
    assert challenger["outcomes"] == {Outcome.OK: 180, Outcome.ERROR: 20}
    assert challenger["latency"] == {str(LatencyHistogram().index(0.004)): 200}
    assert seldon_outcome("OK") is Outcome.OK  # gRPC
    assert seldon_outcome("INVALID_ARGUMENT") is Outcome.CLIENT_ERROR
    assert seldon_outcome("404") is Outcome.CLIENT_ERROR
    assert seldon_outcome("UNAVAILABLE") is Outcome.ERROR


def test_prometheus_unreachable_is_an_error_not_a_failure(tmp_path: Path) -> None:
    metrics = PrometheusMetrics("http://127.0.0.1:9", {"champion": "1", "challenger": "2"})
    with pytest.raises(Exception, match="could not query Prometheus"):
        metrics.snapshot()


@pytest.mark.skipif(not PROMETHEUS, reason="no prometheus (make image-tools installs Debian's)")
def test_seldons_series_read_through_a_real_prometheus(tmp_path: Path) -> None:
    # a small exporter emitting Seldon's agent series as scheduler/pkg/metrics/agent.go names
    # and labels them; the analysis' PromQL runs on Prometheus' own engine
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    from modelship.components.targets.prometheus import SeldonMetrics
    from modelship.core.histogram import LatencyHistogram
    from modelship.core.ports import free_port
    from modelship.gateway.stats import Outcome
    from tests.servers.prometheus import prometheus, wait_for

    registry = CollectorRegistry()
    names = ["server", "server_replica", "model", "model_internal", "method_type", "code"]
    infer = Counter("seldon_model_infer", "inferences", names, registry=registry)
    seconds = Counter("seldon_model_infer_seconds", "inference time", names, registry=registry)
    for model, ok, bad, each in (("m-v1", 300, 0, 0.002), ("m-v2", 90, 10, 0.02)):
        for code, n in (("200", ok), ("500", bad)):
            labels = ("triton", "0", model, f"{model}_1", "rest", code)
            infer.labels(*labels).inc(n)
            seconds.labels(*labels).inc(n * each)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        with prometheus(tmp_path / "prom", [f"127.0.0.1:{port}"], {"namespace": "models"}) as url:
            wait_for(url, "seldon_model_infer_total", lambda rows: len(rows) >= 4)
            metrics = SeldonMetrics(url, {"champion": "m-v1", "challenger": "m-v2"},
                                    {"champion": "1", "challenger": "2"}, 'namespace="models"')  # fmt: skip
            snap = metrics.snapshot()
    finally:
        server.shutdown()
        thread.join(timeout=5)
    hist = LatencyHistogram()
    assert snap["challenger/live"]["outcomes"] == {Outcome.OK: 90, Outcome.ERROR: 10}
    assert snap["challenger/live"]["latency"] == {str(hist.index(0.02)): 100}
    assert snap["champion/live"]["outcomes"] == {Outcome.OK: 300}
