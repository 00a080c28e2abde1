"""Distillation: a smaller student trained on what the original model says over the reference rows.

No labels are needed: the teacher's outputs are the targets. The teacher need not convert to
ONNX itself (a model with no converter, or a pyfunc model, is taught from as it predicts), only
the student must. A classifier's student learns the teacher's probabilities where it gives
them, not only its labels: each reference row appears once per class,
weighted by the teacher's probability of that class, which is the soft-target cross-entropy
written as a weighted fit (so any scikit-learn classifier that takes sample weights can be the
student). Two families of students: a shallow boosted model (trained once to its largest size, then its
shortest prefix of rounds within the budget on the validation rows kept, as ensemble pruning
keeps one) and a small MLP (widths tried from the smallest up, the first within the budget kept).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from modelship.components.optimize.approximation import Approximation, Rows, from_scores
from modelship.components.optimize.convert import NativeOutputs, predict_native
from modelship.components.optimize.ensemble import truncated

GBM = "distillation_gbm"
MLP = "distillation_mlp"
#: boosting rounds of depth-3 trees the boosted student is trained to, before its prefix is cut
GBM_ROUNDS = 100
#: hidden neurons of a one-layer MLP, smallest first
MLP_WIDTHS = (4, 8, 16, 32)
SEED = 0


def distil(teacher: Any, flavor: str, rows: Rows, min_rows: int) -> list[Approximation]:
    """A student of each family, or why there is none."""
    n = len(rows.reference)
    if n < min_rows:
        why = (
            f"{n} reference rows, fewer than optimize.approximate.min_reference_rows ({min_rows}) "
            "to train a student on"
        )
        return [Approximation(GBM, skipped=why), Approximation(MLP, skipped=why)]
    taught = predict_native(teacher, flavor, rows.reference)
    if taught.task == "classification":
        why = ""
        if list(taught.classes) != sorted(taught.classes):
            why = "the original's classes are not in sorted order, as a student's would be"
        elif set(taught.classes) != set(rows.original.classes):
            why = (
                f"the original gives the classes {list(taught.classes)} on the reference rows "
                f"but {list(rows.original.classes)} on the validation rows"
            )
        if why:
            return [Approximation(GBM, skipped=why), Approximation(MLP, skipped=why)]
    return [_boosted(rows, taught), _mlp(rows, taught)]


def _trained_on(rows: Rows, taught: NativeOutputs) -> str:
    said = "labels" if taught.task == "classification" and taught.scores is None else "outputs"
    return f"trained on the original's {said} over {len(rows.reference)} reference rows"


def _boosted(rows: Rows, taught: NativeOutputs) -> Approximation:
    """The shortest prefix of one boosted student's rounds within the budget."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    x, target, weights = _soft_targets(rows.reference, taught)
    classify = taught.task == "classification"
    kind = HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor
    student = kind(max_iter=GBM_ROUNDS, max_depth=3, early_stopping=False, random_state=SEED)
    student.fit(x, target, sample_weight=weights)
    staged = (
        student.staged_predict_proba(rows.validation)
        if classify
        else student.staged_predict(rows.validation)
    )
    for k, out in enumerate(staged, start=1):
        if rows.budget.within(*from_scores(out, rows.original)):
            return Approximation(
                GBM, truncated(student, k), "sklearn",
                f"student: {k} boosting rounds of depth 3, {_trained_on(rows, taught)}", {"rounds": k},
            )  # fmt: skip
    return Approximation(
        GBM,
        out_of_budget=f"no student up to {GBM_ROUNDS} rounds of depth 3 stays within the budget",
    )


def _mlp(rows: Rows, taught: NativeOutputs) -> Approximation:
    """The narrowest one-layer MLP student within the budget."""
    for width in MLP_WIDTHS:
        student = _mlp_student(width, rows.reference, taught)
        out = predict_native(student, "sklearn", rows.validation)
        if rows.budget.within(out.values, out.scores):
            return Approximation(
                MLP, student, "sklearn",
                f"student: one hidden layer of {width}, {_trained_on(rows, taught)}", {"hidden": width},
            )  # fmt: skip
    return Approximation(
        MLP, out_of_budget=f"no student up to one hidden layer of {MLP_WIDTHS[-1]} stays "
        "within the budget",
    )  # fmt: skip


def _soft_targets(
    x: pd.DataFrame, taught: NativeOutputs
) -> tuple[pd.DataFrame, NDArray[Any], NDArray[np.float64] | None]:
    """Rows, targets and weights a student fits: each row once per class, weighted by the
    teacher's probability (classification), the teacher's labels where it gives no
    probabilities (a pyfunc model), or the teacher's values (regression)."""
    if taught.task != "classification":
        return x, np.asarray(taught.values, dtype=np.float64), None
    if taught.scores is None:
        return x, np.asarray(taught.values), None
    k = len(taught.classes)
    repeated = pd.concat([x] * k, ignore_index=True)
    labels = np.repeat(np.asarray(taught.classes), len(x))
    weights = np.asarray(taught.scores, dtype=np.float64).T.reshape(-1)
    return repeated, labels, weights


def _mlp_student(width: int, x: pd.DataFrame, taught: NativeOutputs) -> Any:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows, target, weights = _soft_targets(x, taught)
    kind = MLPClassifier if taught.task == "classification" else MLPRegressor
    student = make_pipeline(
        StandardScaler(),
        kind(hidden_layer_sizes=(width,), solver="lbfgs", max_iter=500, random_state=SEED),
    )
    step = student.steps[-1][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return student.fit(rows, target, **{f"{step}__sample_weight": weights})
