"""Per-variant request counts and latency, as Prometheus text and as JSON snapshots.

The rollout's analysis compares two snapshots taken at the start and the end of a step, so
counts only ever grow and the latency histogram travels whole (its non-empty buckets): the
difference of two snapshots is exactly the traffic of the step, with percentiles within half
a percent. Prometheus gets the same counts with coarse buckets, for dashboards.

Mirrored requests also pair the challenger's answer with the champion's to the same request:
cumulative counts of rows compared, label disagreements and score differences, so the same
difference of two snapshots says how far apart the two versions' answers were over a step.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
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
    #: a copy sent to the challenger; its answer is only compared with the champion's
    MIRROR = "mirror"


#: an HTTP answer: status and body
Answer = tuple[int, bytes]


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


@dataclass(frozen=True)
class Paired:
    """Champion and challenger answers to the same mirrored requests, compared row by row.

    Cumulative in a gateway's snapshot; the traffic of a step in ``paired_between``.
    """

    label_rows: int = 0
    #: label rows whose two predictions differ
    label_disagreements: int = 0
    score_rows: int = 0
    score_abs_diff_sum: float = 0.0
    #: rows where both answers carry class probabilities of the same length
    probability_rows: int = 0
    #: the largest |p - q| of each such row, summed
    probability_abs_diff_sum: float = 0.0
    #: mirrored requests whose answers could not be compared (error, other shape, no champion)
    unpaired: int = 0

    def __add__(self, other: Paired) -> Paired:
        return Paired(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                         for f in fields(self)})  # fmt: skip

    @property
    def rows(self) -> int:
        return self.label_rows + self.score_rows

    @property
    def label_disagreement_rate(self) -> float:
        return self.label_disagreements / self.label_rows if self.label_rows else 0.0

    @property
    def mean_score_diff(self) -> float:
        return self.score_abs_diff_sum / self.score_rows if self.score_rows else math.nan

    @property
    def mean_probability_diff(self) -> float:
        if not self.probability_rows:
            return math.nan
        return self.probability_abs_diff_sum / self.probability_rows


UNPAIRED = Paired(unpaired=1)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: one such row would poison the sums for good
        raise ValueError(f"{text} is not finite")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_rows(body: bytes) -> list[dict[str, Any]] | None:
    """A Bento's answer (one ``{"prediction": ..., "probabilities": [...]}`` per row), or None."""
    try:
        rows = json.loads(body, parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(rows, list):
        return None
    for row in rows:
        if not (isinstance(row, dict) and isinstance(row.get("prediction"), str | int | float)):
            return None
    return rows


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: 1 and 1.0 are, true and 1 are not."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _probabilities(row: Mapping[str, Any]) -> list[float] | None:
    value = row.get("probabilities")
    if not isinstance(value, list) or not value or not all(_is_number(p) for p in value):
        return None
    return [float(p) for p in value]


def compare_rows(
    champion: Sequence[Mapping[str, Any]], challenger: Sequence[Mapping[str, Any]]
) -> Paired:
    """Two answers to one request (rows as ``parse_rows`` gives them), compared row by row."""
    if len(champion) != len(challenger):
        return UNPAIRED
    label_rows = disagreements = score_rows = probability_rows = 0
    score_sum = probability_sum = 0.0
    for ours, theirs in zip(champion, challenger, strict=True):
        a, b = ours["prediction"], theirs["prediction"]
        fractional = any(isinstance(v, float) and not v.is_integer() for v in (a, b))
        # 3.7 against 3.5 is a distance; a class, or an integral value, is equal or not
        if _is_number(a) and _is_number(b) and fractional:
            score_rows += 1
            score_sum += abs(float(a) - float(b))
        else:
            label_rows += 1
            disagreements += not _same(a, b)
        p, q = _probabilities(ours), _probabilities(theirs)
        if p is not None and q is not None and len(p) == len(q):
            probability_rows += 1
            probability_sum += max(abs(x - y) for x, y in zip(p, q, strict=True))
    return Paired(label_rows, disagreements, score_rows, score_sum,
                  probability_rows, probability_sum)  # fmt: skip


def compare_answers(champion: Answer | None, challenger: Answer | None) -> Paired:
    """The champion's and the challenger's HTTP answers to one request (None: no answer)."""
    if champion is None or challenger is None:
        return UNPAIRED
    if not (200 <= champion[0] < 300 and 200 <= challenger[0] < 300):
        return UNPAIRED
    ours, theirs = parse_rows(champion[1]), parse_rows(challenger[1])
    if ours is None or theirs is None:
        return UNPAIRED
    try:
        return compare_rows(ours, theirs)
    except OverflowError:  # an integer beyond a float's range against a fractional score
        return UNPAIRED


class GatewayStats:
    def __init__(self) -> None:
        self.series: dict[tuple[str, str], Series] = {}
        #: requests answered by the other backend after their first one could not be reached
        self.retried: Counter[str] = Counter()
        #: mirrored requests: the challenger's answers compared with the champion's
        self.paired = Paired()

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
        } | {"retried": dict(self.retried), "paired": asdict(self.paired)}

    def pair(self, delta: Paired) -> None:
        self.paired += delta

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
            "# HELP modelship_gateway_paired_rows_total Mirrored rows compared with the "
            "champion's answer, by kind (label or score).",
            "# TYPE modelship_gateway_paired_rows_total counter",
            f'modelship_gateway_paired_rows_total{{kind="label"}} {self.paired.label_rows}',
            f'modelship_gateway_paired_rows_total{{kind="score"}} {self.paired.score_rows}',
            "# HELP modelship_gateway_paired_disagreements_total Mirrored label rows where the "
            "challenger's prediction differs from the champion's.",
            "# TYPE modelship_gateway_paired_disagreements_total counter",
            f"modelship_gateway_paired_disagreements_total {self.paired.label_disagreements}",
            "# HELP modelship_gateway_unpaired_total Mirrored requests whose answers could not "
            "be compared with the champion's.",
            "# TYPE modelship_gateway_unpaired_total counter",
            f"modelship_gateway_unpaired_total {self.paired.unpaired}",
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


def paired_between(earlier: dict[str, Any], later: dict[str, Any]) -> Paired:
    """The answers compared between two snapshots of one gateway (zeros where it pairs none)."""
    after = later.get("paired")
    if not after:  # a source that pairs nothing (Prometheus on a cluster): nothing compared
        return Paired()
    before = earlier.get("paired") or {}
    return Paired(**{f.name: after.get(f.name, 0) - before.get(f.name, 0) for f in fields(Paired)})
