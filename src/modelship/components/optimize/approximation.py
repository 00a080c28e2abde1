"""What every approximation starts from and gives back: the rows, the original, the result.

An approximation is found on the native model (fast to evaluate many candidate sizes there) and
only the one it settles on is converted to ONNX, where the stage judges and times it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from modelship.components.optimize.budget import Budget
from modelship.components.optimize.convert import Converted, NativeOutputs


@dataclass(frozen=True)
class Rows:
    """The validation rows the budget is checked on, and the reference rows to train on."""

    validation: pd.DataFrame
    reference: pd.DataFrame
    #: the reference rows' true labels or values, where the reference data has them
    reference_target: NDArray[Any] | None
    budget: Budget

    @property
    def original(self) -> NativeOutputs:
        return self.budget.original

    def take(self, index: NDArray[np.intp], held_out: bool = False) -> Rows:
        """These rows with only the validation rows at ``index`` (the reference rows whole)."""
        validation = self.validation.iloc[index]
        return Rows(validation, self.reference, self.reference_target,
                    self.budget.take(index, held_out))  # fmt: skip


@dataclass(frozen=True)
class Original:
    """The model the approximations start from and must come in under: the original as it
    converted to ONNX, or, where it did not convert, the native model itself (which only a
    student can replace: a pruned copy would not convert either)."""

    model: Any
    #: the converter the model takes (sklearn, lightgbm, pytorch, onnx), or pyfunc
    flavor: str
    #: what it says about the validation rows
    native: NativeOutputs
    #: bytes an approximation's ONNX graph must come in under, and what they are the size of
    size: int
    size_of: str = "ONNX graph"
    converted: bool = True

    @classmethod
    def of(cls, converted: Converted) -> Original:
        return cls(converted.model, converted.flavor, converted.native, len(converted.onnx_bytes))


@dataclass(frozen=True)
class Approximation:
    """A smaller model within the budget, or why there is none (skipped: does not apply to this
    model; out_of_budget: tried, and no candidate stayed within the budget)."""

    variant: str
    model: Any = None
    #: the converter the model takes (sklearn, lightgbm, pytorch)
    flavor: str = ""
    #: what was kept, for a person: "37 of 200 trees"
    kept: str = ""
    #: sizes for the verdict's figures, e.g. {"trees": 37, "trees_original": 200}
    figures: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None
    out_of_budget: str | None = None


def split_pipeline(model: Any) -> tuple[Any | None, Any]:
    """A scikit-learn Pipeline's fitted transforms and its final estimator (None, model when
    the model is not a Pipeline)."""
    if hasattr(model, "steps") and len(model.steps) > 1:
        return model[:-1], model.steps[-1][1]
    if hasattr(model, "steps"):
        return None, model.steps[-1][1]
    return None, model


def with_last(model: Any, last: Any) -> Any:
    """``model`` with its final estimator replaced by ``last`` (already fitted)."""
    if not hasattr(model, "steps"):
        return last
    from sklearn.pipeline import Pipeline

    return Pipeline([*model.steps[:-1], (model.steps[-1][0], last)])


def transformed(prefix: Any | None, rows: pd.DataFrame) -> Any:
    return rows if prefix is None else prefix.transform(rows)


def from_scores(
    scores: NDArray[Any], original: NativeOutputs
) -> tuple[NDArray[Any], NDArray[np.float64] | None]:
    """Labels and probabilities (classification) or values (regression), read the way the
    original model's outputs were read."""
    if original.task == "classification":
        probabilities = np.asarray(scores, dtype=np.float64)
        labels = np.asarray(original.classes)[np.argmax(probabilities, axis=1)]
        return labels, probabilities
    return np.asarray(scores, dtype=np.float64).reshape(-1), None


def type_name(model: Any) -> str:
    _, last = split_pipeline(model)
    return type(last).__name__
