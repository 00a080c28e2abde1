"""The metric source on Kubernetes: the Bento services' own metrics, read from Prometheus.

Every modelship service counts its requests by version and outcome
(``modelship_requests_total``) and times them (``modelship_request_seconds``), wherever it
runs: KServe runs the Bento image itself. Prometheus scrapes them; this source asks it for
the totals per version and turns them into the same snapshot the local gateway's ``/stats``
gives, so the controller and the analysis do not know which target they drive. Latency comes
from Prometheus' buckets, so percentiles are as coarse as those buckets (each is placed at its
upper edge, as ``histogram_quantile`` would at worst).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from modelship.components.targets.local import RouterError
from modelship.core.histogram import LatencyHistogram
from modelship.gateway.stats import Outcome

#: the service's outcome label, as the gateway's analysis counts it
_OUTCOMES = {"ok": Outcome.OK, "too_large": Outcome.CLIENT_ERROR}


def _outcome(label: str) -> Outcome:
    if label in _OUTCOMES:
        return _OUTCOMES[label]
    if label.startswith("http_4"):
        return Outcome.CLIENT_ERROR
    return Outcome.ERROR  # http_5xx, not_ready


class PrometheusMetrics:
    """``MetricSource`` for a champion and a challenger served on a cluster."""

    def __init__(
        self, url: str, versions: dict[str, str], selector: str = "", timeout_s: float = 5.0
    ) -> None:
        #: variant (champion, challenger) -> model version
        self.versions = versions
        self.url = url.rstrip("/")
        self.selector = selector
        self.timeout_s = timeout_s

    def _query(self, promql: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}",
                                        timeout=self.timeout_s) as r:  # fmt: skip
                answer = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise RouterError(f"could not query Prometheus at {self.url}: {e}",
                              hint="set rollout.kubernetes.prometheus_url") from e  # fmt: skip
        if answer.get("status") != "success":
            raise RouterError(f"Prometheus refused {promql!r}: {answer.get('error')}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def _labels(self) -> str:
        versions = "|".join(sorted(set(self.versions.values())))
        extra = f",{self.selector}" if self.selector else ""
        return f'version=~"{versions}"{extra}'

    def snapshot(self) -> dict[str, Any]:
        by_version: dict[str, dict[str, Any]] = {
            v: {"outcomes": {}, "latency": {}} for v in self.versions.values()
        }
        labels = self._labels()
        for row in self._query(f"sum by (version, outcome) (modelship_requests_total{{{labels}}})"):
            version, outcome = row["metric"]["version"], _outcome(row["metric"]["outcome"])
            counts = by_version[version]["outcomes"]
            counts[outcome] = counts.get(outcome, 0) + int(float(row["value"][1]))
        buckets: dict[str, list[tuple[float, int]]] = {}
        query = f"sum by (version, le) (modelship_request_seconds_bucket{{{labels}}})"
        for row in self._query(query):
            edge = float(row["metric"]["le"])
            buckets.setdefault(row["metric"]["version"], []).append(
                (edge, int(float(row["value"][1])))
            )
        for version, cumulative in buckets.items():
            by_version[version]["latency"] = _sparse(sorted(cumulative))
        return {f"{variant}/live": by_version[version]
                for variant, version in self.versions.items()} | {"instance": "prometheus"}  # fmt: skip

    def challenger_healthy(self) -> bool:
        # readiness on a cluster is the platform's (Knative, Seldon's scheduler): a challenger
        # that fails shows up as errors in the analysis, not as an ejection here
        return True


def _sparse(cumulative: list[tuple[float, int]]) -> dict[str, int]:
    """Prometheus' cumulative buckets as LatencyHistogram buckets at each upper edge."""
    hist = LatencyHistogram()
    previous = 0
    out: dict[str, int] = {}
    finite = [edge for edge, _ in cumulative if not math.isinf(edge)]
    for edge, count in cumulative:
        n = count - previous
        previous = count
        if n <= 0:
            continue
        seconds = edge if not math.isinf(edge) else (finite[-1] * 2 if finite else 60.0)
        key = str(hist.index(seconds))
        out[key] = out.get(key, 0) + n
    return out


#: Seldon's answer codes that are the client's fault: HTTP 4xx over REST, these over gRPC
_GRPC_CLIENT = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "OUT_OF_RANGE",
                "PERMISSION_DENIED", "UNAUTHENTICATED", "ALREADY_EXISTS", "CANCELLED"}  # fmt: skip


def seldon_outcome(code: str) -> Outcome:
    if code in ("200", "OK"):
        return Outcome.OK
    if code.startswith("4") or code in _GRPC_CLIENT:
        return Outcome.CLIENT_ERROR
    return Outcome.ERROR


class SeldonMetrics(PrometheusMetrics):
    """``MetricSource`` from Seldon Core v2's own per-model series.

    Seldon's agent, beside each server, counts every inference per model: the counter
    ``seldon_model_infer_total`` and the summed time ``seldon_model_infer_seconds_total``, both
    labelled ``model`` (the Model's name), ``code`` (the HTTP status over REST, the gRPC status
    name over gRPC), ``method_type``, ``server``, ``server_replica`` (Seldon Core 2.8 and 2.9:
    scheduler/pkg/metrics/agent.go; "Operational monitoring" in Seldon's documentation,
    https://docs.seldon.ai/seldon-core-2/user-guide/operational-monitoring/operational). Its
    per-model histogram-free series give a mean, not percentiles: every request of a version
    is placed at that version's mean latency, so the analysis compares means on Seldon.
    """

    def __init__(
        self, url: str, models: dict[str, str], versions: dict[str, str], selector: str = "",
        timeout_s: float = 5.0,
    ) -> None:  # fmt: skip
        super().__init__(url, versions, selector, timeout_s)
        #: variant (champion, challenger) -> the Seldon Model's name
        self.models = models

    def _labels(self) -> str:
        names = "|".join(sorted(set(self.models.values())))
        extra = f",{self.selector}" if self.selector else ""
        return f'model=~"{names}"{extra}'

    def snapshot(self) -> dict[str, Any]:
        labels = self._labels()
        by_model: dict[str, dict[str, Any]] = {
            m: {"outcomes": {}, "latency": {}} for m in self.models.values()
        }
        totals: dict[str, int] = {}
        for row in self._query(f"sum by (model, code) (seldon_model_infer_total{{{labels}}})"):
            model, outcome = (
                row["metric"].get("model", ""),
                seldon_outcome(row["metric"].get("code", "")),
            )
            if model not in by_model:
                continue
            n = int(float(row["value"][1]))
            if n <= 0:  # a series Seldon created but never counted on
                continue
            counts = by_model[model]["outcomes"]
            counts[outcome] = counts.get(outcome, 0) + n
            totals[model] = totals.get(model, 0) + n
        query = f"sum by (model) (seldon_model_infer_seconds_total{{{labels}}})"
        hist = LatencyHistogram()
        for row in self._query(query):
            model = row["metric"].get("model", "")
            if model in by_model and totals.get(model):
                mean = float(row["value"][1]) / totals[model]
                by_model[model]["latency"] = {str(hist.index(mean)): totals[model]}
        return {f"{variant}/live": by_model[model]
                for variant, model in self.models.items()} | {"instance": "prometheus"}  # fmt: skip
