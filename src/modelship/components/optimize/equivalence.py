"""The equivalence gate: a variant must say what the native model says, within the policy.

Classifiers by label agreement and the largest probability difference, regressors by the
largest absolute and relative error; then the validation metrics, recomputed on the variant,
must stay within the policy's budget. Pure: outputs in, checks out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelship.components import metrics
from modelship.components.optimize.convert import NativeOutputs
from modelship.core.verdict import Check
from modelship.policies.schema import Direction, Equivalence, MetricGate


@dataclass(frozen=True)
class VariantOutputs:
    values: NDArray[Any]
    scores: NDArray[np.float64] | None


def from_onnx(outputs: list[Any], native: NativeOutputs) -> VariantOutputs:
    """Read a session's outputs the way the native model's were read."""
    if native.task == "classification":
        scores = np.asarray(outputs[1], dtype=np.float64)
        classes = np.asarray(native.classes)
        return VariantOutputs(classes[np.argmax(scores, axis=1)], scores)
    return VariantOutputs(np.asarray(outputs[0], dtype=np.float64).reshape(-1), None)


def compare(
    name: str, native: NativeOutputs, variant: VariantOutputs, limits: Equivalence
) -> list[Check]:
    prefix = f"variant.{name}"
    if native.task == "classification":
        disagree = float(np.mean(np.asarray(variant.values) != np.asarray(native.values)))
        assert variant.scores is not None and native.scores is not None
        diff = float(np.max(np.abs(variant.scores - native.scores)))
        return [
            Check(
                name=f"{prefix}.labels", kind="equivalence", blocking=False,
                passed=disagree <= limits.max_label_disagreement, measured=round(disagree, 6),
                threshold=f"<= {limits.max_label_disagreement}",
                reason=f"{disagree:.2%} of labels differ from the native model's",
            ),
            Check(
                name=f"{prefix}.probabilities", kind="equivalence", blocking=False,
                passed=diff <= limits.max_probability_diff, measured=float(f"{diff:.3g}"),
                threshold=f"<= {limits.max_probability_diff}",
                reason=f"largest probability difference {diff:.3g}",
            ),
        ]  # fmt: skip
    error = np.abs(variant.values - native.values.astype(np.float64))
    scale = np.maximum(np.abs(native.values.astype(np.float64)), 1e-12)
    abs_err, rel_err = float(error.max()), float((error / scale).max())
    return [
        Check(
            name=f"{prefix}.abs_error", kind="equivalence", blocking=False,
            passed=abs_err <= limits.max_abs_error, measured=float(f"{abs_err:.3g}"),
            threshold=f"<= {limits.max_abs_error}", reason=f"largest absolute error {abs_err:.3g}",
        ),
        Check(
            name=f"{prefix}.rel_error", kind="equivalence", blocking=False,
            passed=rel_err <= limits.max_rel_error, measured=float(f"{rel_err:.3g}"),
            threshold=f"<= {limits.max_rel_error}", reason=f"largest relative error {rel_err:.3g}",
        ),
    ]  # fmt: skip


def metric_budget(
    name: str,
    gates: list[MetricGate],
    y_true: NDArray[Any],
    native: NativeOutputs,
    variant: VariantOutputs,
    budget: float,
    positive: object | None,
) -> list[Check]:
    """Each validation metric on the variant, against the native model's, within ``budget``."""
    checks = []
    for gate in gates:
        direction = gate.direction or metrics.NATURAL_DIRECTION[gate.name]
        base = metrics.compute(
            gate.name,
            y_true,
            metrics.Predictions(native.values, native.scores, native.classes),
            positive,
        )
        got = metrics.compute(
            gate.name,
            y_true,
            metrics.Predictions(variant.values, variant.scores, native.classes),
            positive,
        )
        if math.isnan(base) or math.isnan(got):
            continue
        worse = base - got if direction is Direction.HIGHER else got - base
        checks.append(
            Check(
                name=f"variant.{name}.metric.{gate.name}", kind="equivalence", blocking=False,
                passed=worse <= budget + 1e-12, measured=round(got, 6),
                threshold=f"within {budget} of native {base:.4f}",
                reason=f"{gate.name} {got:.4f} vs native {base:.4f}",
            )
        )  # fmt: skip
    return checks
