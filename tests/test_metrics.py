"""Metric values against sklearn's own, and the metric gate's checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from modelship.components.metrics import Predictions, compute, gate, labels_from
from modelship.core.verdict import Check
from modelship.policies.schema import Direction, MetricGate, MetricName

# -- compute and labels_from -------------------------------------------------------------------

Y_BINARY = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0, 0])
#: one probability of the positive class per row, as a LightGBM binary booster returns
P_BINARY = np.array([0.1, 0.8, 0.4, 0.3, 0.9, 0.6, 0.7, 0.55, 0.2, 0.05])

Y_MULTI = np.array([0, 1, 2, 2, 1, 0, 2, 1, 0, 1])
#: one score per class per row, columns in class order
S_MULTI = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.1, 0.6, 0.3],
        [0.2, 0.2, 0.6],
        [0.1, 0.5, 0.4],
        [0.3, 0.4, 0.3],
        [0.5, 0.3, 0.2],
        [0.1, 0.1, 0.8],
        [0.6, 0.3, 0.1],
        [0.8, 0.1, 0.1],
        [0.2, 0.7, 0.1],
    ]
)


def test_labels_from_one_probability_per_row_thresholds_at_half() -> None:
    labels = labels_from(Predictions(values=P_BINARY), Y_BINARY)
    assert labels.tolist() == [0, 1, 0, 0, 1, 1, 1, 1, 0, 0]


def test_labels_from_one_probability_per_row_uses_the_true_label_values() -> None:
    y = np.array(["no", "yes", "yes", "no"])
    labels = labels_from(Predictions(values=np.array([0.2, 0.9, 0.5, 0.49])), y)
    assert labels.tolist() == ["no", "yes", "yes", "no"]


def test_labels_from_score_matrix_takes_the_best_class() -> None:
    labels = labels_from(Predictions(values=S_MULTI), Y_MULTI)
    assert labels.tolist() == [0, 1, 2, 1, 1, 0, 2, 0, 0, 1]


def test_labels_from_score_matrix_follows_the_model_class_order() -> None:
    pred = Predictions(values=S_MULTI[:3], classes=("c", "b", "a"))
    labels = labels_from(pred, np.array(["a", "b", "c"]))
    assert labels.tolist() == ["c", "b", "a"]


def test_labels_from_hard_labels_are_left_alone() -> None:
    hard = np.array([0, 1, 1, 0])
    assert labels_from(Predictions(values=hard), hard).tolist() == hard.tolist()
    floats = np.array([0.0, 1.0, 1.0, 0.0])
    assert labels_from(Predictions(values=floats), hard).tolist() == floats.tolist()


def test_binary_metrics_from_one_probability_per_row_match_sklearn() -> None:
    pred = Predictions(values=P_BINARY)
    hard = (P_BINARY >= 0.5).astype(int)
    assert compute(MetricName.ACCURACY, Y_BINARY, pred, None) == pytest.approx(
        skm.accuracy_score(Y_BINARY, hard)
    )
    assert compute(MetricName.F1, Y_BINARY, pred, None) == pytest.approx(
        skm.f1_score(Y_BINARY, hard)
    )
    assert compute(MetricName.ROC_AUC, Y_BINARY, pred, None) == pytest.approx(
        skm.roc_auc_score(Y_BINARY, P_BINARY)
    )


def test_binary_metrics_from_labels_and_score_matrix_match_sklearn() -> None:
    labels = (P_BINARY >= 0.5).astype(int)
    scores = np.column_stack([1 - P_BINARY, P_BINARY])
    pred = Predictions(values=labels, scores=scores, classes=(0, 1))
    assert compute(MetricName.F1, Y_BINARY, pred, None) == pytest.approx(
        skm.f1_score(Y_BINARY, labels)
    )
    assert compute(MetricName.ROC_AUC, Y_BINARY, pred, None) == pytest.approx(
        skm.roc_auc_score(Y_BINARY, P_BINARY)
    )


def test_positive_label_choice_changes_f1() -> None:
    pred = Predictions(values=P_BINARY)
    hard = (P_BINARY >= 0.5).astype(int)
    assert compute(MetricName.F1, Y_BINARY, pred, 0) == pytest.approx(
        skm.f1_score(Y_BINARY, hard, pos_label=0)
    )


def test_multiclass_metrics_match_sklearn() -> None:
    pred = Predictions(values=S_MULTI, scores=S_MULTI, classes=(0, 1, 2))
    hard = S_MULTI.argmax(axis=1)
    assert compute(MetricName.ACCURACY, Y_MULTI, pred, None) == pytest.approx(
        skm.accuracy_score(Y_MULTI, hard)
    )
    assert compute(MetricName.F1, Y_MULTI, pred, None) == pytest.approx(
        skm.f1_score(Y_MULTI, hard, average="macro")
    )
    assert compute(MetricName.ROC_AUC, Y_MULTI, pred, None) == pytest.approx(
        skm.roc_auc_score(Y_MULTI, S_MULTI, multi_class="ovr")
    )


def test_roc_auc_without_scores_is_nan() -> None:
    hard = Predictions(values=(P_BINARY >= 0.5).astype(int))
    assert math.isnan(compute(MetricName.ROC_AUC, Y_BINARY, hard, None))
    multi = Predictions(values=S_MULTI.argmax(axis=1))
    assert math.isnan(compute(MetricName.ROC_AUC, Y_MULTI, multi, None))


def test_regression_metrics_match_sklearn() -> None:
    y = np.array([3.0, -0.5, 2.0, 7.0, 4.2])
    y_hat = np.array([2.5, 0.0, 2.0, 8.0, 3.9])
    pred = Predictions(values=y_hat.reshape(-1, 1))  # a model that returns a column
    assert compute(MetricName.RMSE, y, pred, None) == pytest.approx(
        math.sqrt(skm.mean_squared_error(y, y_hat))
    )
    assert compute(MetricName.MAE, y, pred, None) == pytest.approx(
        skm.mean_absolute_error(y, y_hat)
    )


# -- gate --------------------------------------------------------------------------------------


def one(checks: list[Check], name: str) -> Check:
    [check] = [c for c in checks if c.name == name]
    return check


@pytest.mark.parametrize(
    ("value", "passed"), [(0.81, True), (0.8, True), (0.79, False)], ids=["above", "at", "below"]
)
def test_threshold_for_higher_is_better(value: float, passed: bool) -> None:
    [check] = gate([MetricGate(name=MetricName.F1, threshold=0.8)], {"f1": value}, None)
    assert check.name == "metric.f1"
    assert check.kind == "metric"
    assert check.passed is passed
    assert check.measured == value
    assert check.threshold == ">= 0.8"
    assert ("meets" if passed else "misses") in check.reason


@pytest.mark.parametrize(
    ("value", "passed"), [(1.9, True), (2.0, True), (2.1, False)], ids=["below", "at", "above"]
)
def test_threshold_for_lower_is_better(value: float, passed: bool) -> None:
    [check] = gate([MetricGate(name=MetricName.RMSE, threshold=2.0)], {"rmse": value}, None)
    assert check.passed is passed
    assert check.threshold == "<= 2.0"


def test_explicit_direction_overrides_the_natural_one() -> None:
    g = MetricGate(name=MetricName.R2, threshold=0.1, direction=Direction.LOWER)
    assert gate([g], {"r2": 0.05}, None)[0].passed
    assert not gate([g], {"r2": 0.5}, None)[0].passed


@pytest.mark.parametrize(
    ("candidate", "passed"),
    [(0.92, True), (0.87, True), (0.85, True), (0.8499, False)],
    ids=["better", "within", "at-limit", "beyond"],
)
def test_absolute_regression_higher_is_better(candidate: float, passed: bool) -> None:
    checks = gate(
        [MetricGate(name=MetricName.ACCURACY, max_regression=0.05)],
        {"accuracy": candidate},
        {"accuracy": 0.90},
    )
    [check] = checks  # no threshold: only the comparison with the champion
    assert check.name == "metric.accuracy.vs_champion"
    assert check.passed is passed
    assert not check.skipped
    assert check.measured == pytest.approx(candidate - 0.90)
    if not passed:
        assert "worse by" in check.reason


@pytest.mark.parametrize(
    ("candidate", "passed"),
    [(1.0, True), (1.1, True), (1.1001, False)],
    ids=["equal", "at-limit", "beyond"],
)
def test_absolute_regression_lower_is_better(candidate: float, passed: bool) -> None:
    [check] = gate(
        [MetricGate(name=MetricName.MAE, max_regression=0.1)], {"mae": candidate}, {"mae": 1.0}
    )
    assert check.passed is passed
    assert check.measured == pytest.approx(candidate - 1.0)


@pytest.mark.parametrize(
    ("candidate", "passed"),
    [(0.75, True), (0.72, True), (0.7199, False)],
    ids=["within", "at-limit", "beyond"],
)
def test_relative_regression(candidate: float, passed: bool) -> None:
    [check] = gate(
        [MetricGate(name=MetricName.ROC_AUC, max_relative_regression=0.1)],
        {"roc_auc": candidate},
        {"roc_auc": 0.8},
    )
    assert check.passed is passed
    assert check.threshold == "worsening <= 0.08"


def test_relative_regression_lower_is_better() -> None:
    g = MetricGate(name=MetricName.RMSE, max_relative_regression=0.1)
    assert gate([g], {"rmse": 2.2}, {"rmse": 2.0})[0].passed
    assert not gate([g], {"rmse": 2.21}, {"rmse": 2.0})[0].passed


def test_relative_regression_at_limit_for_large_values() -> None:
    g = MetricGate(name=MetricName.RMSE, max_relative_regression=0.1)
    [check] = gate([g], {"rmse": 1100000.33}, {"rmse": 1000000.3})
    assert check.passed


def test_the_tighter_of_both_regression_limits_applies() -> None:
    g = MetricGate(name=MetricName.F1, max_regression=0.05, max_relative_regression=0.02)
    # relative: 0.02 * 0.9 = 0.018 is tighter than 0.05
    [check] = gate([g], {"f1": 0.87}, {"f1": 0.9})
    assert not check.passed
    assert check.threshold == "worsening <= 0.018"
    assert gate([g], {"f1": 0.885}, {"f1": 0.9})[0].passed


def test_threshold_and_regression_give_two_checks() -> None:
    g = MetricGate(name=MetricName.F1, threshold=0.8, max_regression=0.01)
    checks = gate([g], {"f1": 0.85}, {"f1": 0.9})
    assert [c.name for c in checks] == ["metric.f1", "metric.f1.vs_champion"]
    assert one(checks, "metric.f1").passed
    assert not one(checks, "metric.f1.vs_champion").passed


@pytest.mark.parametrize("champion", [None, {}, {"f1": math.nan}], ids=["none", "no-f1", "nan"])
def test_no_champion_skips_the_comparison(champion: dict[str, float] | None) -> None:
    g = MetricGate(name=MetricName.F1, threshold=0.8, max_regression=0.01)
    checks = gate([g], {"f1": 0.85}, champion)
    vs = one(checks, "metric.f1.vs_champion")
    assert vs.passed
    assert vs.skipped
    assert "no champion" in vs.reason
    assert one(checks, "metric.f1").passed


def test_nan_metric_is_a_failed_check_with_a_reason() -> None:
    g = MetricGate(name=MetricName.ROC_AUC, threshold=0.7, max_regression=0.01)
    checks = gate([g], {"roc_auc": math.nan}, {"roc_auc": 0.8})
    [check] = checks  # nothing to compare either
    assert check.name == "metric.roc_auc"
    assert not check.passed
    assert not check.skipped
    assert check.measured is None
    assert "could not be computed" in check.reason


def test_metric_missing_from_candidate_is_a_failed_check() -> None:
    [check] = gate([MetricGate(name=MetricName.F1, threshold=0.5)], {}, None)
    assert not check.passed
    assert "could not be computed" in check.reason


def test_one_check_per_bar_in_policy_order() -> None:
    gates = [
        MetricGate(name=MetricName.F1, threshold=0.5),
        MetricGate(name=MetricName.ACCURACY, threshold=0.99),
        MetricGate(name=MetricName.LOG_LOSS, threshold=0.4),
    ]
    checks = gate(gates, {"f1": 0.6, "accuracy": 0.9, "log_loss": 0.3}, None)
    assert [(c.name, c.passed) for c in checks] == [
        ("metric.f1", True),
        ("metric.accuracy", False),
        ("metric.log_loss", True),
    ]
