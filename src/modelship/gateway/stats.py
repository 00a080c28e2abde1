"""Per-variant request counts and latency, as Prometheus text and as JSON snapshots.

The rollout's analysis compares two snapshots taken at the start and the end of a step, so
counts only ever grow and the latency histogram travels whole (its non-empty buckets): the
difference of two snapshots is exactly the traffic of the step, with percentiles within half
a percent. Prometheus gets the same counts with coarse buckets, for dashboards.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from modelship.core.histogram import LatencyHistogram, sparse_minus

#: Prometheus buckets (seconds) for the dashboard; analysis uses the fine histogram
PROMETHEUS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Outcome(StrEnum):
    OK = "ok"
    #: the client's own fault (4xx): not held against the variant
    CLIENT_ERROR = "client_error"
    #: the backend answered 5xx
    ERROR = "error"
    #: no backend could be reached, after the retry on the other one
    UNREACHABLE = "unreachable"


class Mode(StrEnum):
    LIVE = "live"
    #: a copy sent to the challenger, its answer discarded
    MIRROR = "mirror"


def outcome_of(status: int) -> Outcome:
    if status >= 500:
        return Outcome.ERROR
    if status >= 400:
        return Outcome.CLIENT_ERROR
    return Outcome.OK


@dataclass
class Series:
    outcomes: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(PROMETHEUS_BUCKETS) + 1))
    seconds_sum: float = 0.0

    def record(self, outcome: Outcome, seconds: float) -> None:
        self.outcomes[outcome] += 1
        self.latency.record(seconds)
        self.seconds_sum += seconds
        for i, edge in enumerate(PROMETHEUS_BUCKETS):
            if seconds <= edge:
                self.buckets[i] += 1
                break
        else:
            self.buckets[-1] += 1


class GatewayStats:
    def __init__(self) -> None:
        self.series: dict[tuple[str, str], Series] = {}
        #: requests answered by the other backend after their first one could not be reached
        self.retried: Counter[str] = Counter()

    def record(self, variant: str, mode: Mode, outcome: Outcome, seconds: float) -> None:
        key = (variant, str(mode))
        if key not in self.series:
            self.series[key] = Series()
        self.series[key].record(outcome, seconds)

    def snapshot(self) -> dict[str, Any]:
        return {
            f"{variant}/{mode}": {
                "outcomes": dict(s.outcomes),
                "latency": s.latency.sparse(),
            }
            for (variant, mode), s in self.series.items()
        } | {"retried": dict(self.retried)}

    def prometheus(self, weights: dict[str, float], healthy: dict[str, bool]) -> str:
        lines = [
            "# HELP modelship_gateway_requests_total Requests through the gateway by variant.",
            "# TYPE modelship_gateway_requests_total counter",
        ]
        for (variant, mode), s in sorted(self.series.items()):
            for outcome, n in sorted(s.outcomes.items()):
                labels = f'variant="{variant}",mode="{mode}",outcome="{outcome}"'
                lines.append(f"modelship_gateway_requests_total{{{labels}}} {n}")
        lines += [
            "# HELP modelship_gateway_request_seconds Time from request to answer, by variant.",
            "# TYPE modelship_gateway_request_seconds histogram",
        ]
        for (variant, mode), s in sorted(self.series.items()):
            labels = f'variant="{variant}",mode="{mode}"'
            running = 0
            for edge, n in zip((*PROMETHEUS_BUCKETS, "+Inf"), s.buckets, strict=True):
                running += n
                lines.append(
                    f'modelship_gateway_request_seconds_bucket{{{labels},le="{edge}"}} {running}'
                )
            lines.append(f"modelship_gateway_request_seconds_sum{{{labels}}} {s.seconds_sum}")
            lines.append(f"modelship_gateway_request_seconds_count{{{labels}}} {running}")
        lines += [
            "# HELP modelship_gateway_retried_total Requests answered by the other backend.",
            "# TYPE modelship_gateway_retried_total counter",
            *(
                f'modelship_gateway_retried_total{{from_variant="{v}"}} {n}'
                for v, n in sorted(self.retried.items())
            ),
            "# HELP modelship_gateway_weight Share of requests (percent) each variant gets.",
            "# TYPE modelship_gateway_weight gauge",
            *(f'modelship_gateway_weight{{variant="{v}"}} {w}' for v, w in weights.items()),
            "# HELP modelship_gateway_backend_healthy 1 while the backend passes health checks.",
            "# TYPE modelship_gateway_backend_healthy gauge",
            *(
                f'modelship_gateway_backend_healthy{{variant="{v}"}} {int(ok)}'
                for v, ok in healthy.items()
            ),
        ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Traffic:
    """One variant's traffic between two snapshots."""

    requests: int
    errors: int
    latency: LatencyHistogram

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p(self, q: float) -> float:
        """The q-th percentile in milliseconds (nan without traffic)."""
        return self.latency.percentile(q) * 1e3


def traffic_between(
    earlier: dict[str, Any], later: dict[str, Any], variant: str, mode: Mode = Mode.LIVE
) -> Traffic:
    key = f"{variant}/{mode}"
    before = earlier.get(key, {"outcomes": {}, "latency": {}})
    after = later.get(key, {"outcomes": {}, "latency": {}})
    counts = {k: v - before["outcomes"].get(k, 0) for k, v in after["outcomes"].items()}
    # a client's bad request says nothing about the variant: left out of rate and latency
    judged = sum(v for k, v in counts.items() if k != Outcome.CLIENT_ERROR)
    errors = counts.get(Outcome.ERROR, 0) + counts.get(Outcome.UNREACHABLE, 0)
    latency = LatencyHistogram.from_sparse(sparse_minus(after["latency"], before["latency"]))
    return Traffic(judged, errors, latency)
