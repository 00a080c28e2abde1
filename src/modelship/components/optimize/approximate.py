"""The approximate variants the policy asks for: found, converted to ONNX, judged by the budget.

Each kind (``optimize.approximate.kinds``) gives one or more variants, found on the native model
(see :mod:`ensemble`, :mod:`neurons`, :mod:`distill`). The one each settles on is converted, its
graph optimized as the exact ``fp32`` variant's is, and judged again from the ONNX session's own
outputs on validation rows the searches did not see (:func:`split`): every budget metric within
its drop, and a graph smaller than the original's (its ONNX graph; where it did not convert, its
saved files, and then only a distilled student applies). What does not apply is skipped with
the reason; what fails is dropped, never fatal: the exact variants stand whatever happens here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from modelship.components.optimize import distill, ensemble, equivalence, neurons
from modelship.components.optimize.approximation import Approximation, Original, Rows
from modelship.components.optimize.budget import describe_drops
from modelship.components.optimize.convert import INPUT_NAME, ConversionFailed, convert_model
from modelship.components.optimize.variants import (
    SessionSettings,
    VariantFile,
    build_variants,
    open_session,
)
from modelship.core.verdict import Check
from modelship.policies.schema import Approximate, ApproximationKind, MetricName, Variant


@dataclass(frozen=True)
class Judged:
    """One approximate variant after judging: its checks, and its file and session when it
    passed them all."""

    variant: str
    checks: list[Check]
    path: Path | None = None
    session: Any = None
    kept: str = ""
    drops: dict[MetricName, float] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    skipped: bool = False
    #: its ONNX graph as converted (what a quantized copy starts from)
    graph: bytes = field(default=b"", repr=False)

    @property
    def detail(self) -> str:
        if self.session is not None:
            return f"approximate: {self.kept}; {describe_drops(self.drops)}"
        return "; ".join(c.reason for c in self.checks if not c.passed or c.skipped)[:200]


def _finders(
    original: Original, rows: Rows, policy: Approximate
) -> dict[ApproximationKind, Callable[[], list[Approximation]]]:
    model, flavor = original.model, original.flavor
    if not original.converted:
        why = (
            "the original did not convert to ONNX, so a pruned copy of it would not either "
            "(distillation can give it a student that does)"
        )
        return {
            ApproximationKind.ENSEMBLE_PRUNING: lambda: [Approximation(ensemble.VARIANT, skipped=why)],
            ApproximationKind.STRUCTURED_PRUNING: lambda: [Approximation(neurons.VARIANT, skipped=why)],
            ApproximationKind.DISTILLATION: lambda: distill.distil(
                model, flavor, rows, policy.min_reference_rows
            ),
        }  # fmt: skip
    return {
        ApproximationKind.ENSEMBLE_PRUNING: lambda: [ensemble.prune(model, flavor, rows)],
        ApproximationKind.STRUCTURED_PRUNING: lambda: [neurons.prune(model, flavor, rows)],
        ApproximationKind.DISTILLATION: lambda: distill.distil(
            model, flavor, rows, policy.min_reference_rows
        ),
    }


_VARIANTS = {
    ApproximationKind.ENSEMBLE_PRUNING: [ensemble.VARIANT],
    ApproximationKind.STRUCTURED_PRUNING: [neurons.VARIANT],
    ApproximationKind.DISTILLATION: [distill.GBM, distill.MLP],
}


#: reference rows the searches train and rank on: students see each row once per class, so a
#: reference table of millions would make the stage take hours for no better student
MAX_REFERENCE_ROWS = 20_000


#: the split of the validation rows is seeded: a rerun of the stage judges on the same rows
SPLIT_SEED = 0


def split(rows: Rows, policy: Approximate) -> tuple[Rows, Rows, Check]:
    """The rows the searches choose each size on, the rows the budget is judged on, and a check
    that says which. A size chosen as the smallest within the budget on some rows is, by that
    choice, at the edge of the budget there; judged on the same rows it would pass whatever it
    does on the next ones. So ``policy.held_out`` of the validation rows (a stratified share for
    a classifier) are kept from the searches and judged on. Where that would leave fewer than
    ``policy.min_held_out_rows``, both use every row and the check says the drops may be
    optimistic."""
    n = len(rows.validation)
    held = round(n * policy.held_out)
    name = "optimize.approximate.held_out"
    why = ""
    if policy.held_out == 0:
        why = "optimize.approximate.held_out is 0"
    elif held < policy.min_held_out_rows:
        why = (f"holding out {policy.held_out:g} of them would leave {held}, fewer than "
               f"optimize.approximate.min_held_out_rows ({policy.min_held_out_rows})")  # fmt: skip
    elif held == n:
        why = f"holding out {policy.held_out:g} of them would leave none for the searches"
    if why:
        return rows, rows, Check(
            name=name, kind="approximation", passed=True, blocking=False, measured=0,
            reason=f"the searches and the budget share all {n} validation rows ({why}): each "
            "size is judged on the rows that chose it, so its drops may be smaller than on new data",
        )  # fmt: skip
    rng = np.random.default_rng(SPLIT_SEED)
    order = rng.permutation(n)
    if rows.original.task == "classification":  # each class split in the same share
        labels, _ = pd.factorize(np.asarray(rows.budget.y_true)[order])  # any label type
        rank = np.empty(n)
        for label in np.unique(labels):
            at = np.flatnonzero(labels == label)  # this class's rows, in the shuffled order
            rank[at] = (np.arange(len(at)) + 0.5) / len(at)
        order = order[np.argsort(rank, kind="stable")]
    judged, searched = np.sort(order[:held]), np.sort(order[held:])
    return rows.take(searched), rows.take(judged, held_out=True), Check(
        name=name, kind="approximation", passed=True, blocking=False, measured=held,
        reason=f"the searches chose each size on {len(searched)} of the {n} validation rows; the "
        f"budget is judged on the other {held}, which they did not see",
    )  # fmt: skip


def find(original: Original, rows: Rows, policy: Approximate) -> list[Approximation]:
    """What each kind in the policy finds, in the policy's order."""
    if len(rows.reference) > MAX_REFERENCE_ROWS:
        target = rows.reference_target
        rows = dataclasses.replace(
            rows, reference=rows.reference.iloc[:MAX_REFERENCE_ROWS],
            reference_target=None if target is None else target[:MAX_REFERENCE_ROWS],
        )  # fmt: skip
    unusable = rows.budget.unusable
    if not rows.budget.base:
        why = (
            "no metric in optimize.approximate.max_metric_drop can judge this model: "
            + "; ".join(unusable.values())
        )
        return [Approximation(v, skipped=why) for k in policy.kinds for v in _VARIANTS[k]]
    finders = _finders(original, rows, policy)
    found: list[Approximation] = []
    for kind in policy.kinds:
        try:
            found += finders[kind]()
        except Exception as e:  # a library that refuses a copy it did not fit: drop this kind
            found += [Approximation(v, out_of_budget=f"search failed: {type(e).__name__}: {e}")
                      for v in _VARIANTS[kind]]  # fmt: skip
    return found


def _built(name: str, reason: str) -> Judged:
    return Judged(name, [Check(name=f"variant.{name}.builds", kind="approximation", passed=False,
                               blocking=False, reason=f"could not be built: {reason}")])  # fmt: skip


def _judged(
    name: str, path: Path, graph: bytes, kept: str, figures: dict[str, float], original: Original,
    rows: Rows, x: NDArray[np.float32], settings: SessionSettings,
) -> Judged:  # fmt: skip
    """The graph at ``path`` run on the validation rows, judged by the budget and by its size
    (``graph``: the file as converted, before ONNX Runtime's optimizations)."""
    try:
        session = open_session(VariantFile(Variant.FP32, path), settings)
        outputs = session.run(None, {INPUT_NAME: x})
    except Exception as e:  # a runtime that refuses the smaller graph: drop it
        return _built(name, f"{type(e).__name__}: {e}")
    got = equivalence.from_onnx(outputs, original.native)
    checks = rows.budget.checks(name, got.values, got.scores)
    size = len(graph)
    checks.append(Check(
        name=f"variant.{name}.smaller", kind="approximation", blocking=False,
        passed=size < original.size, measured=size, threshold=f"< {original.size} bytes",
        reason=f"its ONNX graph is {size:,} bytes, the original's {original.size_of} "
        f"{original.size:,}",
    ))  # fmt: skip
    drops = rows.budget.drops(got.values, got.scores)
    passed = all(c.passed for c in checks)
    figures = {**figures, "onnx_bytes": float(size)}
    return Judged(name, checks, path if passed else None, session if passed else None, kept,
                  drops, figures, graph=graph)  # fmt: skip


def judge(
    found: Approximation, original: Original, rows: Rows, x: NDArray[np.float32],
    workdir: Path, calibration: NDArray[np.float32], settings: SessionSettings,
) -> Judged:  # fmt: skip
    """Convert what was found, optimize its graph, and check the budget on its session."""
    name = found.variant
    if found.skipped:
        return Judged(name, [Check(name=f"variant.{name}.applies", kind="approximation",
                                   passed=True, skipped=True, blocking=False,
                                   reason=f"skipped: {found.skipped}")], skipped=True)  # fmt: skip
    if found.out_of_budget or found.model is None:
        return Judged(name, [Check(name=f"variant.{name}.budget", kind="approximation",
                                   passed=False, blocking=False,
                                   reason=found.out_of_budget or "nothing found")])  # fmt: skip
    try:
        onnx = convert_model(found.model, found.flavor, rows.validation).onnx_bytes
        [vf] = build_variants(onnx, [Variant.FP32], workdir / "approximate" / name, calibration)
        if vf.path is None:
            raise ConversionFailed(vf.error or "the optimized graph was not written")
        (workdir / "variants").mkdir(exist_ok=True)  # not there when the original did not convert
        path = vf.path.rename(workdir / "variants" / f"{name}.onnx")
    except Exception as e:  # a converter that refuses the smaller model: drop it
        return _built(name, f"{type(e).__name__}: {e}")
    return _judged(name, path, onnx, found.kept, found.figures, original, rows, x, settings)


def quantized(
    judged: Judged, original: Original, rows: Rows, x: NDArray[np.float32], workdir: Path,
    calibration: NDArray[np.float32], settings: SessionSettings,
) -> Judged | None:  # fmt: skip
    """An approximation that stayed within the budget, quantized to INT8 (dynamic) as the exact
    ``int8_dynamic`` variant is, and judged by the same budget against the original (both
    losses together); None where its graph has nothing to quantize (trees)."""
    if judged.session is None:
        return None
    name = f"{judged.variant}_int8"
    try:
        [vf] = build_variants(
            judged.graph, [Variant.INT8_DYNAMIC], workdir / "approximate" / name, calibration
        )
        if vf.skipped:
            return None
        if vf.path is None:
            raise ConversionFailed(vf.error or "the quantized graph was not written")
        path = vf.path.rename(workdir / "variants" / f"{name}.onnx")
    except Exception as e:  # a quantizer that refuses the graph: drop it, keep the fp32 one
        return _built(name, f"{type(e).__name__}: {e}")
    kept = f"{judged.kept}, quantized to INT8"
    figures = {k: v for k, v in judged.figures.items() if k != "onnx_bytes"}
    return _judged(name, path, path.read_bytes(), kept, figures, original, rows, x, settings)


@dataclass(frozen=True)
class Outcome:
    """Every approximate variant the policy asked for, judged; which rows judged them
    (:func:`split`), and the budget metrics that could not judge them."""

    judged: list[Judged]
    held_out: Check
    unusable: list[Check]

    @property
    def checks(self) -> list[Check]:
        """The split's check and the unusable metrics', in that order, for the verdict."""
        return [self.held_out, *self.unusable]


def run(
    original: Original, rows: Rows, policy: Approximate, workdir: Path,
    calibration: NDArray[np.float32], settings: SessionSettings, *, quantize: bool,
    step: Callable[[str], None] = lambda _: None,
) -> Outcome:  # fmt: skip
    """The validation rows split (:func:`split`), each kind's variant found on one part and
    judged on the other; with ``quantize``, each one within the budget quantized to INT8 and
    judged again. ``step`` hears the name of each variant before it is judged."""
    search, judging, held_out = split(rows, policy)
    unusable = [
        Check(name=f"optimize.approximate.{metric}", kind="approximation", passed=True,
              skipped=True, blocking=False, reason=f"not in the budget: {why}")
        for metric, why in judging.budget.unusable.items()
    ]  # fmt: skip
    x = judging.validation.to_numpy(np.float32)
    judged: list[Judged] = []
    for found in find(original, search, policy):
        step(f"metric budget: {found.variant}")
        j = judge(found, original, judging, x, workdir, calibration, settings)
        q = quantized(j, original, judging, x, workdir, calibration, settings) if quantize else None
        judged += [j] if q is None else [j, q]
    return Outcome(judged, held_out, unusable)
