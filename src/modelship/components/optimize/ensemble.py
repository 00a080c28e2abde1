"""Ensemble pruning: the smallest ensemble of the original's own trees within the budget.

A boosted model keeps a prefix of its rounds (each round corrects the ones before, so only a
prefix is a model); a forest keeps its first trees (they are drawn alike, so the first k are as
good a subset as any k, and a subset picked tree by tree on the validation rows would be fitted
to the very rows that judge it). Every size is evaluated on the native model, at once where the
library gives staged predictions; the smallest within the budget is the one converted.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelship.components.optimize.approximation import (
    Approximation,
    Rows,
    from_scores,
    split_pipeline,
    transformed,
    with_last,
)
from modelship.components.optimize.convert import lightgbm_outputs

VARIANT = "ensemble_pruning"
_FORESTS = {
    "RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier", "ExtraTreesRegressor",
}  # fmt: skip
_BOOSTED = {
    "GradientBoostingClassifier", "GradientBoostingRegressor",
    "HistGradientBoostingClassifier", "HistGradientBoostingRegressor",
}  # fmt: skip


def prune(model: Any, flavor: str, rows: Rows) -> Approximation:
    if flavor == "lightgbm":
        return _lightgbm(model, rows)
    if flavor != "sklearn":
        return Approximation(
            VARIANT, skipped=f"applies to tree ensembles; the model is a {flavor} model"
        )
    prefix, last = split_pipeline(model)
    kind = type(last).__name__
    if kind not in _FORESTS | _BOOSTED:
        return Approximation(
            VARIANT, skipped=f"applies to forests and boosted trees; the model is {kind}"
        )
    if getattr(last, "n_outputs_", 1) > 1:
        return Approximation(VARIANT, skipped=f"{kind} with several outputs")
    x = transformed(prefix, rows.validation)
    staged = _forest_stages(last, x) if kind in _FORESTS else _boosted_stages(last, x)
    unit = "trees" if kind in _FORESTS else "boosting rounds"
    total = _members(last)
    k = _smallest(staged, rows)
    if k is None:
        return _out_of_budget(total, unit)
    return Approximation(
        VARIANT, with_last(model, truncated(last, k)), "sklearn", f"{k} of {total} {unit}",
        {"members": k, "members_original": total},
    )  # fmt: skip


def _members(last: Any) -> int:
    if hasattr(last, "_predictors"):  # HistGradientBoosting
        return len(last._predictors)
    return len(last.estimators_)


def _forest_stages(forest: Any, x: Any) -> Iterator[tuple[int, NDArray[Any]]]:
    """The first k trees' averaged output, for each k below the forest's size."""
    x = np.asarray(x, dtype=np.float32)  # the trees were fitted on float32 arrays, no names
    classify = hasattr(forest, "predict_proba")
    total = None
    for k, tree in enumerate(forest.estimators_[:-1], start=1):
        out = tree.predict_proba(x) if classify else tree.predict(x)
        total = out if total is None else total + out
        yield k, total / k


def _boosted_stages(booster: Any, x: Any) -> Iterator[tuple[int, NDArray[Any]]]:
    staged = booster.staged_predict_proba if hasattr(booster, "predict_proba") else None
    stages = staged(x) if staged else booster.staged_predict(x)
    total = _members(booster)
    for k, out in enumerate(stages, start=1):
        if k >= total:
            return
        yield k, out


def truncated(last: Any, k: int) -> Any:
    """A copy of the fitted ensemble that holds only its first ``k`` members (the trees are
    shared with the original, never changed)."""
    pruned = copy.copy(last)
    if hasattr(last, "_predictors"):
        pruned._predictors = last._predictors[:k]  # n_iter_ is read from it
        return pruned
    pruned.estimators_ = last.estimators_[:k]
    pruned.n_estimators = k
    if hasattr(last, "n_estimators_"):
        pruned.n_estimators_ = k
    if hasattr(last, "train_score_"):
        pruned.train_score_ = last.train_score_[:k]
    return pruned


def _smallest(stages: Iterator[tuple[int, NDArray[Any]]], rows: Rows) -> int | None:
    for k, out in stages:
        if rows.budget.within(*from_scores(out, rows.original)):
            return k
    return None


def _out_of_budget(total: int, unit: str) -> Approximation:
    return Approximation(
        VARIANT, out_of_budget=f"no ensemble smaller than the original's {total} {unit} stays "
        "within the budget",
    )  # fmt: skip


def _lightgbm(model: Any, rows: Rows) -> Approximation:
    import lightgbm as lgb

    booster = model.booster_ if hasattr(model, "booster_") else model
    total = int(booster.current_iteration())
    for k in range(1, total):
        out = lightgbm_outputs(booster, rows.validation, num_iteration=k)
        if rows.budget.within(out.values, out.scores):
            pruned = lgb.Booster(model_str=booster.model_to_string(num_iteration=k))
            return Approximation(
                VARIANT, pruned, "lightgbm", f"{k} of {total} boosting rounds",
                {"members": k, "members_original": total},
            )  # fmt: skip
    return _out_of_budget(total, "boosting rounds")
