"""Analysis of one canary step: the challenger against the champion on the same traffic.

From the gateway's counts between the step's start and now: error rates and latencies of both
versions, and the two versions' answers to the same (mirrored) requests, paired. Each
comparison is a one-sided test with an allowed effect and a confidence, in the manner of
Netflix's Kayenta judge: a step fails only when the data show the challenger worse by more than
the policy allows, so a few slow requests or a handful of disagreements on a shared machine
never fail a model, and too little data is inconclusive. The two versions' prediction
distributions (Evidently, over different requests) remain as ``prediction_check:
distribution``. :func:`judge` is pure; the readers around it turn unreadable inputs into an
Error outcome (retried), never into a Failed one (held against the model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from modelship.components.rollout.state import AnalysisOutcome, AnalysisRecord
from modelship.gateway.stats import Paired, Traffic
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


@dataclass(frozen=True)
class Finding:
    """One comparison's result: failed or not, with its test, sample sizes and figures."""

    failed: bool
    reason: str
    figures: dict[str, Any]


def error_rate_finding(champion: Traffic, challenger: Traffic, policy: Analysis) -> Finding:
    """One-sided two-proportion z-test of H0: the challenger's error rate exceeds the
    champion's by at most ``max_error_rate_increase``."""
    allowed = policy.max_error_rate_increase
    ours = champion.error_rate if champion.requests else 0.0
    theirs = challenger.error_rate
    variance = theirs * (1 - theirs) / max(challenger.requests, 1)
    if champion.requests:
        variance += ours * (1 - ours) / champion.requests
    excess = theirs - ours - allowed
    if excess <= 0:
        p_value = 1.0
    elif variance == 0:
        p_value = 0.0  # every request failed, or none did: no doubt left
    else:
        p_value = float(stats.norm.sf(excess / math.sqrt(variance)))
    failed = p_value < 1 - policy.confidence
    figures = {"test": "two-proportion z (one-sided)", "p_value": round(p_value, 6),
               "allowed_increase": allowed, "n_challenger": challenger.requests,
               "n_champion": champion.requests}  # fmt: skip
    reason = (
        f"error rate {theirs:.2%} against the champion's {ours:.2%}: more than "
        f"{allowed:.2%} higher at {policy.confidence:.0%} confidence (p={p_value:.3g})"
    )
    return Finding(failed, reason, figures)


def _samples_ms(traffic: Traffic) -> np.ndarray:
    edges, counts = traffic.latency.buckets_ms()
    return np.repeat(edges, counts)


def latency_finding(champion: Traffic, challenger: Traffic, policy: Analysis) -> Finding:
    """Mann-Whitney U, one-sided: are the challenger's latencies larger than the champion's
    scaled by the allowed effect (``max_p99_ratio`` times, plus ``p99_floor_ms``)?"""
    ratio, floor = policy.max_p99_ratio, policy.p99_floor_ms
    p99, champion_p99 = challenger.p(99), champion.p(99)
    figures: dict[str, Any] = {"allowed_ratio": ratio, "allowed_floor_ms": floor,
                               "n_challenger": challenger.requests,
                               "n_champion": champion.requests}  # fmt: skip
    if policy.latency_check == "p99":
        limit = max(champion_p99 * ratio, champion_p99 + floor)
        figures.update(test="p99 against a limit", p99_limit_ms=_ms(limit))
        return Finding(
            p99 > limit,
            f"p99 {p99:.1f} ms against the champion's {champion_p99:.1f} ms (limit "
            f"{limit:.1f} ms: x{ratio:g} or +{floor:g} ms)",
            figures,
        )
    theirs, ours = _samples_ms(challenger), _samples_ms(champion)
    result = stats.mannwhitneyu(theirs, ours * ratio + floor, alternative="greater")
    p_value = float(result.pvalue)
    median, champion_median = float(np.median(theirs)), float(np.median(ours))
    figures.update(
        test="Mann-Whitney U (one-sided)", p_value=round(p_value, 6),
        median_ms=round(median, 3), champion_median_ms=round(champion_median, 3),
        median_ratio=round(median / champion_median, 3) if champion_median else None,
    )  # fmt: skip
    return Finding(
        p_value < 1 - policy.confidence,
        f"latency median {median:.2f} ms against the champion's {champion_median:.2f} ms: "
        f"slower than x{ratio:g} + {floor:g} ms at {policy.confidence:.0%} confidence "
        f"(Mann-Whitney p={p_value:.3g})",
        figures,
    )


def _wilson_lower(successes: int, n: int, confidence: float) -> float:
    """The lower end of Wilson's one-sided interval for a proportion."""
    z = float(stats.norm.ppf(confidence))
    share = successes / n
    centre = share + z * z / (2 * n)
    spread = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def paired_finding(paired: Paired, policy: Analysis) -> Finding | None:
    """The two versions' answers to the same requests; None when too few were paired."""
    if paired.rows < policy.min_paired:
        return None
    figures: dict[str, Any] = {"test": "paired answers", "paired_rows": paired.rows,
                               "label_rows": paired.label_rows, "score_rows": paired.score_rows,
                               "unpaired": paired.unpaired}  # fmt: skip
    failures = []
    if paired.label_rows:
        rate = paired.label_disagreement_rate
        lower = _wilson_lower(paired.label_disagreements, paired.label_rows, policy.confidence)
        figures.update(label_disagreement=round(rate, 6), label_disagreement_lower=round(lower, 6),
                       max_label_disagreement=policy.max_label_disagreement)  # fmt: skip
        if lower > policy.max_label_disagreement:
            failures.append(
                f"the versions disagree on {rate:.1%} of {paired.label_rows} paired labels (at "
                f"least {lower:.1%} at {policy.confidence:.0%} confidence; allowed "
                f"{policy.max_label_disagreement:.1%})"
            )
    if paired.probability_rows:
        diff = paired.mean_probability_diff
        figures.update(probability_diff=round(diff, 6), probability_rows=paired.probability_rows,
                       max_probability_diff=policy.max_probability_diff)  # fmt: skip
        if policy.max_probability_diff is not None and diff > policy.max_probability_diff:
            failures.append(
                f"their class probabilities differ by {diff:.3f} on average (allowed "
                f"{policy.max_probability_diff:g})"
            )
    if paired.score_rows:
        diff = paired.mean_score_diff
        figures.update(score_diff=round(diff, 6), max_score_diff=policy.max_score_diff)
        if policy.max_score_diff is not None and diff > policy.max_score_diff:
            failures.append(
                f"their scores differ by {diff:.4g} on average (allowed {policy.max_score_diff:g})"
            )
    if failures:
        return Finding(True, "; ".join(failures), figures)
    return Finding(False, f"{paired.rows} paired answers agree within the policy", figures)


def judge(
    step: int,
    champion: Traffic,
    challenger: Traffic,
    drift: PredictionDrift | None,
    policy: Analysis,
    now: float,
    *,
    drift_skipped: str = "",
    paired: Paired | None = None,
) -> AnalysisRecord:
    """The step's outcome from what was measured; every figure and test is kept in the record.

    ``paired`` is the two versions' answers to the same requests in the step (None where the
    step has no champion traffic to pair, at 100%); ``drift`` the distribution comparison.
    """
    figures: dict[str, Any] = {
        "challenger_requests": challenger.requests,
        "champion_requests": champion.requests,
        "challenger_error_rate": round(challenger.error_rate, 6),
        "champion_error_rate": round(champion.error_rate, 6),
        "challenger_p99_ms": _ms(challenger.p(99)),
        "champion_p99_ms": _ms(champion.p(99)),
    }

    def record(outcome: AnalysisOutcome, reason: str) -> AnalysisRecord:
        return AnalysisRecord(step=step, outcome=outcome, reason=reason, at=now, figures=figures)

    # each comparison needs its own sample: one that has it and fails is enough to fail the
    # step; otherwise one that lacks it makes the step inconclusive
    findings: dict[str, Finding] = {}
    lacking: list[str] = []
    if challenger.requests < max(1, policy.min_requests):
        lacking.append(
            f"only {challenger.requests} requests reached the challenger "
            f"(rollout.analysis.min_requests: {policy.min_requests})"
        )
    else:
        findings["error_rate"] = error_rate_finding(champion, challenger, policy)
        # with no champion traffic in the step (at 100%), latency has nothing to compare with
        if champion.requests >= max(1, policy.min_requests // 10):
            findings["latency"] = latency_finding(champion, challenger, policy)
    if policy.prediction_check == "paired" and paired is not None:
        found = paired_finding(paired, policy)
        if found is None:
            figures["paired_rows"] = paired.rows
            lacking.append(
                f"only {paired.rows} answers of both versions to the same requests "
                f"(rollout.analysis.min_paired: {policy.min_paired}; more traffic or a larger "
                "rollout.mirror_share)"
            )
        else:
            findings["predictions"] = found
    elif policy.prediction_check == "distribution" and drift is not None:
        figures["prediction_drift_share"] = drift.share
        figures["prediction_drift"] = drift.columns
        worst = ", ".join(f"{c} ({d['method']} {d['score']:.3g})" for c, d in drift.columns.items())
        drifted = drift.share > policy.prediction_drift_share
        findings["predictions"] = Finding(
            drifted,
            f"the challenger's predictions drifted from the champion's: {worst}"
            if drifted
            else f"prediction drift share {drift.share:.2f}",
            {"test": f"Evidently {policy.prediction_drift_method} distance (unpaired)",
             "champion_rows": drift.champion_rows, "challenger_rows": drift.challenger_rows},
        )  # fmt: skip
    elif drift_skipped and policy.prediction_check == "distribution":
        figures["prediction_drift_skipped"] = drift_skipped
    for name, found in findings.items():
        figures[name] = {**found.figures, "failed": found.failed}
    failed = [f.reason for f in findings.values() if f.failed]
    if failed:
        return record(AnalysisOutcome.FAILED, "; ".join(failed))
    if lacking:
        return record(AnalysisOutcome.INCONCLUSIVE, "; ".join(lacking))
    versus = f"champion {champion.p(99):.1f} ms" if champion.requests else "champion idle"
    summary = (
        f"{challenger.requests} requests, error rate {challenger.error_rate:.2%}, "
        f"p99 {challenger.p(99):.1f} ms ({versus})"
    )
    if "predictions" in findings:
        summary += f"; {findings['predictions'].reason}"
    return record(AnalysisOutcome.SUCCESSFUL, summary)
