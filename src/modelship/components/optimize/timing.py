"""Measure variants in-process: single-row latency percentiles and batch throughput.

Latency is taken per call with ``perf_counter_ns`` over rows cycled from the validation data,
after a warm-up; throughput is rows per second at each batch size, the median of repeats.
Variants that are compared are measured side by side, interleaved (:func:`side_by_side`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Timing:
    p50_us: float
    p99_us: float
    rows_per_s: dict[int, float]

    def as_dict(self) -> dict[str, float]:
        out = {"p50_us": round(self.p50_us, 2), "p99_us": round(self.p99_us, 2)}
        out.update({f"rows_per_s_{b}": round(r, 1) for b, r in self.rows_per_s.items()})
        return out


def measure(
    predict: Callable[[Any], Any],
    rows: NDArray[Any] | Any,
    batch_sizes: list[int],
    *,
    calls: int = 1000,
    warmup: int = 100,
    min_seconds: float = 0.2,
    take: Callable[[Any, int, int], Any] | None = None,
) -> Timing:
    """Time ``predict`` on one row at a time and on batches; ``take(rows, start, n)`` slices."""
    return side_by_side({"": predict}, rows, batch_sizes, calls=calls, warmup=warmup,
                        min_seconds=min_seconds, take=take)[""]  # fmt: skip


def side_by_side(
    predicts: Mapping[str, Callable[[Any], Any]],
    rows: NDArray[Any] | Any,
    batch_sizes: list[int],
    *,
    calls: int = 1000,
    warmup: int = 100,
    rounds: int = 10,
    settle: int = 10,
    min_seconds: float = 0.2,
    take: Callable[[Any, int, int], Any] | None = None,
) -> dict[str, Timing]:
    """Time several predicts on the same rows, interleaved: each gets ``calls`` single rows and
    its batches in ``rounds`` turns, taken in a rotating order. Timed one after another, a noisy
    neighbour on a shared machine slows whichever variant happens to be running (a thousand
    calls of 10 us fit in one scheduler slice); interleaved, it slows them all alike, so the
    ratios the selection decides by hold. Each turn starts with ``settle`` calls that are not
    timed: the first calls after another variant ran find the caches holding its weights, a cost
    that timing one variant at a time never had."""
    take = take or (lambda data, start, n: data[start : start + n])
    names = list(predicts)
    n_rows = len(rows)
    singles = [take(rows, i % n_rows, 1) for i in range(min(n_rows, 256))]
    for name in names:
        for i in range(warmup):
            predicts[name](singles[i % len(singles)])
    samples = {name: np.empty(calls, dtype=np.int64) for name in names}
    per_round = -(-calls // rounds)
    for turn in range(rounds):
        for name in _rotated(names, turn):
            predict, out = predicts[name], samples[name]
            for i in range(settle):
                predict(singles[i % len(singles)])
            for i in range(turn * per_round, min(calls, (turn + 1) * per_round)):
                row = singles[i % len(singles)]
                t0 = time.perf_counter_ns()
                predict(row)
                out[i] = time.perf_counter_ns() - t0
    throughput: dict[str, dict[int, float]] = {name: {} for name in names}
    for size in batch_sizes:
        batch = take(_tile(rows, max(1, -(-size // n_rows))), 0, size)
        times: dict[str, list[float]] = {name: [] for name in names}
        for name in names:
            predicts[name](batch)
        started = time.perf_counter()
        turn = 0
        # at least three each, then until min_seconds a variant (at most 200 each)
        while turn < 3 or (time.perf_counter() - started < min_seconds * len(names) and turn < 200):
            for name in _rotated(names, turn):
                begun = time.perf_counter()
                predicts[name](batch)
                times[name].append(time.perf_counter() - begun)
            turn += 1
        for name in names:
            throughput[name][size] = size / statistics.median(times[name])
    return {
        name: Timing(float(np.percentile(samples[name], 50) / 1e3),
                     float(np.percentile(samples[name], 99) / 1e3), throughput[name])
        for name in names
    }  # fmt: skip


def _rotated(names: list[str], turn: int) -> list[str]:
    """The order of one turn: each name leads in its turn, so none always runs first."""
    k = turn % len(names)
    return names[k:] + names[:k]


def _tile(rows: Any, reps: int) -> Any:
    if reps == 1:
        return rows
    if hasattr(rows, "iloc"):
        import pandas as pd

        return pd.concat([rows] * reps, ignore_index=True)
    return np.concatenate([rows] * reps)
