"""The Grafana dashboard: well formed, and every metric and label it queries really exists.

Gateway names come from the exposition text `GatewayStats.prometheus` really writes; service
names from the prometheus_client declarations in bentos/service.py, as they are exposed.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from functools import cache
from importlib.resources import files
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

from modelship.gateway.routing import Variant
from modelship.gateway.stats import GatewayStats, Mode, Outcome

DASHBOARD = Path(str(files("modelship.gateway").joinpath("dashboards", "modelship-rollout.json")))
SERVICE = Path(str(files("modelship.bentos").joinpath("service.py")))

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
ROWS = ["Traffic split", "Errors", "Latency", "Model services"]
#: labels Prometheus adds to every series of a scrape target
TARGET_LABELS = frozenset({"job", "instance"})

METRIC = re.compile(r"\bmodelship_[A-Za-z0-9_]*")
SELECTOR = re.compile(r"\b(modelship_[A-Za-z0-9_]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s")
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="')


@cache
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def all_panels() -> list[dict[str, Any]]:
    """Every panel, rows included, and those inside collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def graphs() -> list[dict[str, Any]]:
    return [p for p in all_panels() if p["type"] != "row"]


def exprs() -> list[str]:
    """Every PromQL query: panel targets and the templating variables' queries."""
    found = [t["expr"] for p in graphs() for t in p.get("targets", []) if "expr" in t]
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        found.append(var["definition"])
        query = var["query"]
        found.append(query["query"] if isinstance(query, dict) else query)
    return found


# -- what really exists ------------------------------------------------------------------------


@cache
def gateway_exposition() -> str:
    """The text the gateway's /metrics serves, with traffic on every variant and mode."""
    stats = GatewayStats()
    for variant in Variant:
        for outcome in Outcome:
            stats.record(variant, Mode.LIVE, outcome, 0.003)
        stats.retried[variant] += 1
    stats.record(Variant.CHALLENGER, Mode.MIRROR, Outcome.OK, 0.2)
    stats.record(Variant.CHALLENGER, Mode.MIRROR, Outcome.UNREACHABLE, 3.0)
    weights = {str(Variant.CHAMPION): 90.0, str(Variant.CHALLENGER): 10.0}
    healthy = {str(v): True for v in Variant}
    return stats.prometheus(weights, healthy)


@cache
def gateway_series() -> dict[str, frozenset[str]]:
    """Sample name -> label names, from the exposition text (comments skipped)."""
    series: dict[str, set[str]] = {}
    for line in gateway_exposition().splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"unparsable exposition line: {line!r}"
        labels = series.setdefault(match[1], set())
        labels.update(LABEL.findall(match[2] or ""))
    return {name: frozenset(labels) for name, labels in series.items()}


def _declarations() -> Iterator[tuple[str, str, list[str]]]:
    """(type, name, label names) of each prometheus_client metric declared in the service."""
    for node in ast.walk(ast.parse(SERVICE.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        kind = node.func.attr
        if kind not in {"Counter", "Gauge", "Histogram", "Summary"} or not node.args:
            continue
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            continue
        labels: ast.expr | None = node.args[2] if len(node.args) > 2 else None
        for keyword in node.keywords:
            if keyword.arg == "labelnames":
                labels = keyword.value
        names = ast.literal_eval(labels) if labels is not None else []
        yield kind, first.value, list(names)


@cache
def service_series() -> dict[str, frozenset[str]]:
    """Sample name -> label names, as prometheus_client exposes the service's metrics."""
    series: dict[str, frozenset[str]] = {}
    for kind, name, labels in _declarations():
        plain = frozenset(labels)
        if kind == "Counter":  # "x" and "x_total" both expose x_total
            series[name.removesuffix("_total") + "_total"] = plain
        elif kind == "Gauge":
            series[name] = plain
        elif kind == "Histogram":
            series[f"{name}_bucket"] = plain | {"le"}
            series[f"{name}_sum"] = series[f"{name}_count"] = plain
        else:  # Summary
            series[name] = plain | {"quantile"}
            series[f"{name}_sum"] = series[f"{name}_count"] = plain
    return series


def real_labels(metric: str) -> frozenset[str] | None:
    """The labels of a series a scrape really yields, None where there is no such series."""
    known = gateway_series() if metric.startswith("modelship_gateway_") else service_series()
    labels = known.get(metric)
    return None if labels is None else labels | TARGET_LABELS


def metrics_in(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


# -- the dashboard -----------------------------------------------------------------------------


def test_identity() -> None:
    board = dashboard()
    assert board["title"] == "modelship · rollout and serving"
    assert board["uid"] == "modelship-rollout"
    assert board["schemaVersion"] == 39
    assert board["description"].strip()
    assert board.get("id") is None, "an id ties the JSON to one Grafana; import needs none"


def test_datasource_is_a_prometheus_variable() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, var["name"]


def test_the_variant_variable_offers_the_gateways_variants() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["variant"]["query"].split(",") == [str(v) for v in Variant]


def test_rows_in_order() -> None:
    assert [p["title"] for p in all_panels() if p["type"] == "row"] == ROWS


@pytest.mark.parametrize("panel", graphs(), ids=lambda p: str(p["title"]))
def test_panel_has_title_description_datasource_and_queries(panel: dict[str, Any]) -> None:
    assert panel["title"].strip()
    assert panel["description"].strip(), "say what the person on call should look for"
    assert panel["datasource"] == DATASOURCE
    assert panel["targets"], "no queries"
    refs = [t["refId"] for t in panel["targets"]]
    assert len(refs) == len(set(refs)), f"refIds repeat: {refs}"
    for target in panel["targets"]:
        assert target["expr"].strip()
        assert target["datasource"] == DATASOURCE
        assert metrics_in(target["expr"]), f"no modelship metric in {target['expr']!r}"


def test_panel_ids_are_unique() -> None:
    ids = [p["id"] for p in all_panels()]
    assert len(ids) == len(set(ids)), ids


def test_panels_fit_the_grid_and_do_not_overlap() -> None:
    boxes = []
    for panel in all_panels():
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["y"] >= 0 and pos["w"] > 0 and pos["h"] > 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']} sticks out of the 24 columns"
        boxes.append((panel["title"], pos))
    for (a, p), (b, q) in combinations(boxes, 2):
        apart = (
            p["x"] + p["w"] <= q["x"]
            or q["x"] + q["w"] <= p["x"]
            or p["y"] + p["h"] <= q["y"]
            or q["y"] + q["h"] <= p["y"]
        )
        assert apart, f"{a!r} and {b!r} overlap"


@pytest.mark.parametrize("expr", exprs())
def test_queries_are_balanced(expr: str) -> None:
    assert expr.count('"') % 2 == 0, expr
    for opening, closing in ("()", "{}", "[]"):
        depth = 0
        for char in re.sub(r'"[^"]*"', '""', expr):
            depth += (char == opening) - (char == closing)
            assert depth >= 0, f"unbalanced {opening}{closing} in {expr!r}"
        assert depth == 0, f"unbalanced {opening}{closing} in {expr!r}"


# -- the metrics and labels are real ----------------------------------------------------------


def test_the_exposition_has_every_gateway_metric() -> None:
    """The stand-in traffic reaches every series, so a missing name is a wrong name."""
    assert set(gateway_series()) == {
        "modelship_gateway_requests_total",
        "modelship_gateway_request_seconds_bucket",
        "modelship_gateway_request_seconds_sum",
        "modelship_gateway_request_seconds_count",
        "modelship_gateway_retried_total",
        "modelship_gateway_weight",
        "modelship_gateway_backend_healthy",
        "modelship_gateway_paired_rows_total",
        "modelship_gateway_paired_disagreements_total",
        "modelship_gateway_unpaired_total",
    }


def test_the_service_declarations_are_found() -> None:
    series = service_series()
    assert series["modelship_requests_total"] == {"version", "outcome"}
    assert series["modelship_request_seconds_bucket"] == {"version", "le"}
    assert {"modelship_batch_rows_count", "modelship_model_seconds_sum"} <= set(series)


def test_every_metric_the_dashboard_uses_exists() -> None:
    used = set().union(*(metrics_in(e) for e in exprs()))
    missing = sorted(m for m in used if real_labels(m) is None)
    assert not missing, f"not exposed by the gateway or the services: {missing}"
    # both sources are used: the check above covered each kind
    assert any(m.startswith("modelship_gateway_") for m in used)
    assert any(not m.startswith("modelship_gateway_") for m in used)


@pytest.mark.parametrize(
    "wrong",
    [
        "modelship_gateway_requestz_total",
        "modelship_gateway_request_seconds",  # a histogram's name, not a series
        "modelship_gateway_weights",
        "modelship_requests_total_total",
        "modelship_request_seconds_total",
        "modelship_batch_rows",
        "modelship_predicted_rows",  # a counter is exposed with _total
    ],
)
def test_the_existence_check_rejects_wrong_names(wrong: str) -> None:
    assert real_labels(wrong) is None


def labels_used(expr: str) -> Iterator[tuple[str | None, str]]:
    """(metric or None for a grouping, label) for each label name the query mentions."""
    for metric, matchers in SELECTOR.findall(expr):
        for label in MATCHER.findall(matchers):
            yield metric, label
    for group in GROUPING.findall(expr):
        for label in group.split(","):
            if label.strip():
                yield None, label.strip()


def wrong_labels(expr: str) -> list[str]:
    metrics = metrics_in(expr)
    real = {m: real_labels(m) or frozenset() for m in metrics}
    union = frozenset().union(*real.values())
    wrong = []
    for metric, label in labels_used(expr):
        allowed = real[metric] if metric is not None else union
        if label not in allowed:
            wrong.append(f"{metric or 'grouping'}: {label}")
    return wrong


@pytest.mark.parametrize("expr", exprs())
def test_every_label_the_dashboard_uses_exists(expr: str) -> None:
    assert not wrong_labels(expr)


@pytest.mark.parametrize(
    "wrong",
    [
        'rate(modelship_requests_total{variant="challenger"}[1m])',
        "sum by (variant) (rate(modelship_model_seconds_sum[1m]))",
        'modelship_gateway_retried_total{variant="challenger"}',
        "sum by (outcome) (modelship_gateway_weight)",
    ],
)
def test_the_label_check_rejects_wrong_labels(wrong: str) -> None:
    assert wrong_labels(wrong)
