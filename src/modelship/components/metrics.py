"""Metric values and the metric gate: absolute thresholds and regression against the champion.

Everything here is pure: predictions in, numbers and checks out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelship.core.verdict import Check
from modelship.policies.schema import Direction, MetricGate, MetricName

NATURAL_DIRECTION: dict[MetricName, Direction] = {
    MetricName.ACCURACY: Direction.HIGHER,
    MetricName.BALANCED_ACCURACY: Direction.HIGHER,
    MetricName.PRECISION: Direction.HIGHER,
    MetricName.RECALL: Direction.HIGHER,
    MetricName.F1: Direction.HIGHER,
    MetricName.ROC_AUC: Direction.HIGHER,
    MetricName.LOG_LOSS: Direction.LOWER,
    MetricName.RMSE: Direction.LOWER,
    MetricName.MAE: Direction.LOWER,
    MetricName.R2: Direction.HIGHER,
}

CLASSIFICATION = {
    MetricName.ACCURACY,
    MetricName.BALANCED_ACCURACY,
    MetricName.PRECISION,
    MetricName.RECALL,
    MetricName.F1,
    MetricName.ROC_AUC,
    MetricName.LOG_LOSS,
}


@dataclass(frozen=True)
class Predictions:
    """What a model said about the validation rows."""

    #: labels (classification) or values (regression), one per row
    values: NDArray[Any]
    #: class probabilities, one column per class in ``classes`` order; None when unavailable
    scores: NDArray[np.float64] | None = None
    classes: tuple[object, ...] = ()


def labels_from(pred: Predictions, y_true: NDArray[Any]) -> NDArray[Any]:
    """Class labels. A model that outputs one probability per row (a LightGBM binary booster)
    is thresholded at 0.5 against the sorted true labels."""
    values = pred.values
    if values.ndim == 2 and values.shape[1] > 1:
        order = np.array(pred.classes) if pred.classes else np.unique(y_true)
        return np.asarray(order[np.argmax(values, axis=1)])
    values = values.reshape(-1)
    if values.dtype.kind == "f":
        labels = np.unique(y_true)
        if (
            len(labels) == 2
            and np.all((values >= 0) & (values <= 1))
            and not np.all(np.isin(values, labels))
        ):
            return np.asarray(np.where(values >= 0.5, labels[1], labels[0]))
    return values


def positive_scores(
    pred: Predictions, y_true: NDArray[Any], positive: object
) -> NDArray[np.float64] | None:
    if pred.scores is not None and pred.scores.ndim == 2:
        classes = list(pred.classes) if pred.classes else sorted(np.unique(y_true).tolist())
        if positive in classes:
            return np.asarray(pred.scores[:, classes.index(positive)], dtype=np.float64)
    values = pred.values.reshape(-1)
    if values.dtype.kind == "f" and np.all((values >= 0) & (values <= 1)):
        return np.asarray(values, dtype=np.float64)
    return None


def compute(
    name: MetricName, y_true: NDArray[Any], pred: Predictions, positive: object | None
) -> float:
    """The value of one metric; NaN when the predictions cannot give it (e.g. no scores)."""
    from sklearn import metrics as m

    if name in (MetricName.RMSE, MetricName.MAE, MetricName.R2):
        y_hat = pred.values.reshape(-1).astype(float)
        if name is MetricName.RMSE:
            return float(math.sqrt(m.mean_squared_error(y_true, y_hat)))
        if name is MetricName.MAE:
            return float(m.mean_absolute_error(y_true, y_hat))
        return float(m.r2_score(y_true, y_hat))
    labels = labels_from(pred, y_true)
    classes = np.unique(y_true)
    binary = len(classes) == 2
    pos = positive if positive is not None else (classes[1] if binary else None)
    average = "binary" if binary else "macro"
    kw: dict[str, object] = {"average": average, "zero_division": 0}
    if binary:
        kw["pos_label"] = pos
    if name is MetricName.ACCURACY:
        return float(m.accuracy_score(y_true, labels))
    if name is MetricName.BALANCED_ACCURACY:
        return float(m.balanced_accuracy_score(y_true, labels))
    if name is MetricName.PRECISION:
        return float(m.precision_score(y_true, labels, **kw))
    if name is MetricName.RECALL:
        return float(m.recall_score(y_true, labels, **kw))
    if name is MetricName.F1:
        return float(m.f1_score(y_true, labels, **kw))
    if name is MetricName.ROC_AUC:
        if binary:
            score = positive_scores(pred, y_true, pos)
            return float(m.roc_auc_score(y_true == pos, score)) if score is not None else math.nan
        if pred.scores is None:
            return math.nan
        return float(
            m.roc_auc_score(
                y_true, pred.scores, multi_class="ovr", labels=list(pred.classes) or None
            )
        )
    if name is MetricName.LOG_LOSS:
        if pred.scores is None:
            return math.nan
        return float(m.log_loss(y_true, pred.scores, labels=list(pred.classes) or None))
    raise ValueError(f"unknown metric {name}")


def _worse_by(direction: Direction, candidate: float, champion: float) -> float:
    """How much worse the candidate is than the champion (negative: better)."""
    return champion - candidate if direction is Direction.HIGHER else candidate - champion


def gate(
    gates: list[MetricGate], candidate: dict[str, float], champion: dict[str, float] | None
) -> list[Check]:
    """One check per bar in the policy: absolute thresholds, then regressions vs the champion."""
    checks: list[Check] = []
    for g in gates:
        direction = g.direction or NATURAL_DIRECTION[g.name]
        name = str(g.name)
        value = candidate.get(name, math.nan)
        better = ">=" if direction is Direction.HIGHER else "<="
        if math.isnan(value):
            checks.append(
                Check(
                    name=f"metric.{name}",
                    kind="metric",
                    passed=False,
                    measured=None,
                    reason=f"{name} could not be computed from the model's predictions "
                    "(a probability metric needs predict_proba or probability outputs)",
                )
            )
            continue
        if g.threshold is not None:
            ok = value >= g.threshold if direction is Direction.HIGHER else value <= g.threshold
            checks.append(
                Check(
                    name=f"metric.{name}",
                    kind="metric",
                    passed=ok,
                    measured=round(value, 6),
                    threshold=f"{better} {g.threshold}",
                    reason=f"{name} {value:.4f} {'meets' if ok else 'misses'} the bar {better} {g.threshold}",
                )
            )
        if g.max_regression is None and g.max_relative_regression is None:
            continue
        champ = None if champion is None else champion.get(name)
        if champ is None or math.isnan(champ):
            checks.append(
                Check(
                    name=f"metric.{name}.vs_champion",
                    kind="metric",
                    passed=True,
                    skipped=True,
                    reason="no champion to compare with: absolute thresholds only",
                )
            )
            continue
        worse = _worse_by(direction, value, champ)
        limits = []
        if g.max_regression is not None:
            limits.append(g.max_regression)
        if g.max_relative_regression is not None:
            limits.append(g.max_relative_regression * abs(champ))
        allowed = min(limits)
        # at the limit is within it: compare with a tolerance relative to the values' size
        ok = worse <= allowed or math.isclose(worse, allowed, rel_tol=1e-9, abs_tol=1e-12)
        change = f"{value:.4f} vs champion {champ:.4f}"
        checks.append(
            Check(
                name=f"metric.{name}.vs_champion",
                kind="metric",
                passed=ok,
                measured=round(
                    value - champ, 6
                ),  # the change; the threshold says which way is worse
                threshold=f"worsening <= {allowed:.4g}",
                reason=(
                    f"{name} {change}: within the allowed worsening of {allowed:.4g}"
                    if ok
                    else f"{name} {change}: worse by {worse:.4f}, more than the allowed {allowed:.4g}"
                ),
            )
        )
    return checks
