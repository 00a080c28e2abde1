"""Analysis of one canary step: the challenger against the champion on the same traffic.

From the gateway's counts between the step's start and now: error rates and p99 latency; from
the two versions' inference logs over the same time: Evidently's drift test between their
predictions. :func:`judge` is pure; the readers around it turn unreadable inputs into an Error
outcome (retried), never into a Failed one (held against the model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from modelship.components.rollout.state import AnalysisOutcome, AnalysisRecord
from modelship.gateway.stats import Traffic
from modelship.policies.schema import Analysis

#: a numeric prediction with at most this many distinct values is treated as a label
_MAX_LABELS = 20


@dataclass(frozen=True)
class PredictionDrift:
    #: share of prediction columns Evidently calls drifted
    share: float
    columns: dict[str, dict[str, Any]]
    champion_rows: int
    challenger_rows: int


def prediction_drift(
    champion: pd.DataFrame,
    challenger: pd.DataFrame,
    method: str = "jensenshannon",
    threshold: float = 0.1,
) -> PredictionDrift:
    """Evidently's drift test ``method`` on the ``prediction`` column of both logs."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    column = "prediction"
    values = pd.concat([champion[column], challenger[column]])
    numeric = pd.api.types.is_numeric_dtype(values) and values.nunique() > _MAX_LABELS
    definition = DataDefinition(
        numerical_columns=[column] if numeric else [],
        categorical_columns=[] if numeric else [column],
    )

    def dataset(frame: pd.DataFrame) -> Any:
        data = frame[[column]].copy()
        if not numeric:
            data[column] = data[column].astype(str)
        return Dataset.from_pandas(data, data_definition=definition)

    preset = DataDriftPreset(method=method, threshold=threshold)
    snapshot = Report([preset]).run(dataset(challenger), dataset(champion))
    share = 0.0
    columns: dict[str, dict[str, Any]] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif config.get("type", "").endswith("ValueDrift"):
            columns[config["column"]] = {
                "method": config.get("method"),
                "score": float(metric["value"]),
                "threshold": config.get("threshold"),
            }
    return PredictionDrift(share, columns, len(champion), len(challenger))


def _ms(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def judge(
    step: int,
    champion: Traffic,
    challenger: Traffic,
    drift: PredictionDrift | None,
    policy: Analysis,
    now: float,
    *,
    drift_skipped: str = "",
) -> AnalysisRecord:
    """The step's outcome from what was measured; every figure is kept in the record."""
    figures: dict[str, Any] = {
        "challenger_requests": challenger.requests,
        "champion_requests": champion.requests,
        "challenger_error_rate": round(challenger.error_rate, 6),
        "champion_error_rate": round(champion.error_rate, 6),
        "challenger_p99_ms": _ms(challenger.p(99)),
        "champion_p99_ms": _ms(champion.p(99)),
    }
    if drift is not None:
        figures["prediction_drift_share"] = drift.share
        figures["prediction_drift"] = drift.columns
    elif drift_skipped:
        figures["prediction_drift_skipped"] = drift_skipped

    def record(outcome: AnalysisOutcome, reason: str) -> AnalysisRecord:
        return AnalysisRecord(step=step, outcome=outcome, reason=reason, at=now, figures=figures)

    if challenger.requests < max(1, policy.min_requests):
        return record(
            AnalysisOutcome.INCONCLUSIVE,
            f"only {challenger.requests} requests reached the challenger "
            f"(rollout.analysis.min_requests: {policy.min_requests})",
        )
    baseline_errors = champion.error_rate if champion.requests else 0.0
    increase = challenger.error_rate - baseline_errors
    if increase > policy.max_error_rate_increase:
        return record(
            AnalysisOutcome.FAILED,
            f"error rate {challenger.error_rate:.2%} against the champion's "
            f"{baseline_errors:.2%} (allowed increase {policy.max_error_rate_increase:.2%})",
        )
    # with no champion traffic in the step (at 100%), latency has nothing to be compared with
    if champion.requests >= max(1, policy.min_requests // 10):
        p99, champion_p99 = challenger.p(99), champion.p(99)
        limit = max(champion_p99 * policy.max_p99_ratio, champion_p99 + policy.p99_floor_ms)
        figures["p99_limit_ms"] = _ms(limit)
        if p99 > limit:
            return record(
                AnalysisOutcome.FAILED,
                f"p99 {p99:.1f} ms against the champion's {champion_p99:.1f} ms (limit "
                f"{limit:.1f} ms: x{policy.max_p99_ratio:g} or +{policy.p99_floor_ms:g} ms)",
            )
    if drift is not None and drift.share > policy.prediction_drift_share:
        worst = ", ".join(f"{c} ({d['method']} {d['score']:.3g})" for c, d in drift.columns.items())
        return record(
            AnalysisOutcome.FAILED,
            f"the challenger's predictions drifted from the champion's on the same traffic: "
            f"{worst}",
        )
    versus = f"champion {champion.p(99):.1f} ms" if champion.requests else "champion idle"
    summary = (
        f"{challenger.requests} requests, error rate {challenger.error_rate:.2%}, "
        f"p99 {challenger.p(99):.1f} ms ({versus})"
    )
    if drift is not None:
        summary += f", prediction drift share {drift.share:.2f}"
    return record(AnalysisOutcome.SUCCESSFUL, summary)
