"""The metric budget approximate variants are judged by, and the rule that picks the winner.

An exact variant must say what the original model says (the equivalence gate); an approximate
one may say less, so long as no metric named in ``optimize.approximate.max_metric_drop`` drops by
more than its budget against the original model on the same validation rows. Pure: outputs in,
drops, checks and choices out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelship.components import metrics
from modelship.components.optimize.convert import NativeOutputs
from modelship.components.optimize.timing import Timing
from modelship.core.verdict import Check
from modelship.policies.schema import Direction, MetricName

_REGRESSION = {MetricName.RMSE, MetricName.MAE, MetricName.R2}


@dataclass(frozen=True)
class Budget:
    """The largest drop of each metric that applies to the task, against the original model."""

    limits: dict[MetricName, float]
    y_true: NDArray[Any]
    original: NativeOutputs
    positive: object | None = None
    #: whether the rows were held out from the searches (said in each check's reason)
    held_out: bool = False
    #: the original model's value of each metric in ``limits``
    base: dict[MetricName, float] = field(init=False)
    #: budget metrics that do not apply to this task, or the original model cannot give
    unusable: dict[MetricName, str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "limits", {MetricName(n): v for n, v in self.limits.items()})
        base: dict[MetricName, float] = {}
        unusable: dict[MetricName, str] = {}
        classify = self.original.task == "classification"
        for name in self.limits:
            if name not in (metrics.CLASSIFICATION if classify else _REGRESSION):
                unusable[name] = f"{name} does not apply to a {self.original.task} model"
                continue
            value = self._compute(name, self.original.values, self.original.scores)
            if math.isnan(value):
                unusable[name] = f"{name} cannot be computed from the original model's outputs"
            else:
                base[name] = value
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "unusable", unusable)

    def _compute(
        self, name: MetricName, values: NDArray[Any], scores: NDArray[np.float64] | None
    ) -> float:
        predictions = metrics.Predictions(values, scores, self.original.classes)
        return metrics.compute(name, self.y_true, predictions, self.positive)

    def take(self, index: NDArray[np.intp], held_out: bool) -> Budget:
        """The same budget on the rows at ``index`` only, the original's values recomputed there."""
        y_true = np.asarray(self.y_true)[index]
        return Budget(self.limits, y_true, self.original.take(index), self.positive, held_out)

    def drops(
        self, values: NDArray[Any], scores: NDArray[np.float64] | None
    ) -> dict[MetricName, float]:
        """How much worse each usable metric is than the original's (negative: better; NaN:
        the candidate's outputs cannot give it)."""
        out: dict[MetricName, float] = {}
        for name, base in self.base.items():
            got = self._compute(name, values, scores)
            higher = metrics.NATURAL_DIRECTION[name] is Direction.HIGHER
            out[name] = (base - got) if higher else (got - base)
        return out

    def within(self, values: NDArray[Any], scores: NDArray[np.float64] | None) -> bool:
        drops = self.drops(values, scores)
        return bool(drops) and all(
            not math.isnan(d) and d <= self.limits[n] + 1e-12 for n, d in drops.items()
        )

    def checks(
        self, variant: str, values: NDArray[Any], scores: NDArray[np.float64] | None
    ) -> list[Check]:
        """One check per budget metric: the candidate's drop against the original's value."""
        checks = []
        for name, drop in self.drops(values, scores).items():
            limit = self.limits[name]
            ok = not math.isnan(drop) and drop <= limit + 1e-12
            checks.append(
                Check(
                    name=f"variant.{variant}.drop.{name}", kind="approximation", blocking=False,
                    passed=ok, measured=round(drop, 6), threshold=f"<= {limit}",
                    reason=f"{name} drops {drop:+.4f} from the original's {self.base[name]:.4f}"
                    f" (budget {limit}) on {len(self.y_true)} validation rows"
                    + (" the search did not see" if self.held_out else ""),
                )
            )  # fmt: skip
        return checks


def describe_drops(drops: Mapping[Any, float]) -> str:
    """e.g. "accuracy drop +0.0035, roc_auc drop -0.0010" (negative: better than the original)."""
    return ", ".join(f"{name} drop {d:+.4f}" for name, d in drops.items())


#: what each objective compares, for a person reading the choice
_MEASURE = {"latency": "single-row p50", "throughput": "rows/s at the largest batch"}


def score(timing: Timing, objective: str, batch_size: int) -> float:
    """Higher is better: calls per second for one row (latency), or rows per second."""
    if objective == "throughput":
        return timing.rows_per_s[batch_size]
    return 1e6 / timing.p50_us


@dataclass(frozen=True)
class Choice:
    variant: str
    approximate: bool
    reason: str
    #: the chosen approximate variant's objective over the best exact one's (1.0: none chosen)
    gain: float = 1.0


def choose(
    exact: dict[str, Timing],
    approximate: dict[str, Timing],
    objective: str,
    batch_size: int,
    min_gain: float,
) -> Choice:
    """The variant to serve. An approximate variant costs accuracy, so it must beat the best
    exact variant on the objective by more than ``min_gain`` (a share); a smaller gain is within
    the noise of one measurement on a shared machine, and the exact variant wins the tie."""
    rank = {v: score(t, objective, batch_size) for v, t in {**exact, **approximate}.items()}
    best_exact = max(exact, key=rank.__getitem__) if exact else None
    best_approx = max(approximate, key=rank.__getitem__) if approximate else None
    if best_approx is None:
        assert best_exact is not None
        return Choice(best_exact, False, "")
    if best_exact is None:
        return Choice(best_approx, True, f"{best_approx}: no exact variant to compare it with")
    gain = rank[best_approx] / rank[best_exact]
    if gain > 1.0 + min_gain:
        return Choice(
            best_approx, True, f"{best_approx} is {gain:.2f}x as fast as {best_exact} "
            f"({_MEASURE[objective]}), more than the {1.0 + min_gain:.2f}x "
            "optimize.approximate.min_gain asks", gain,
        )  # fmt: skip
    return Choice(
        best_exact, False, f"{best_exact} kept: the fastest approximate variant, {best_approx}, "
        f"is {gain:.2f}x as fast ({_MEASURE[objective]}), not more than {1.0 + min_gain:.2f}x "
        "(min_gain)",
    )  # fmt: skip
