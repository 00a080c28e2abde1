"""Measure a variant in-process: single-row latency percentiles and batch throughput.

Latency is taken per call with ``perf_counter_ns`` over rows cycled from the validation data,
after a warm-up; throughput is rows per second at each batch size, the median of repeats.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
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
    take = take or (lambda data, start, n: data[start : start + n])
    n_rows = len(rows)
    singles = [take(rows, i % n_rows, 1) for i in range(min(n_rows, 256))]
    for i in range(warmup):
        predict(singles[i % len(singles)])
    samples = np.empty(calls, dtype=np.int64)
    for i in range(calls):
        row = singles[i % len(singles)]
        t0 = time.perf_counter_ns()
        predict(row)
        samples[i] = time.perf_counter_ns() - t0
    throughput: dict[int, float] = {}
    for size in batch_sizes:
        reps = max(1, -(-size // n_rows))
        batch = take(_tile(rows, reps), 0, size)
        predict(batch)
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - started < min_seconds and len(times) < 200):
            begun = time.perf_counter()
            predict(batch)
            times.append(time.perf_counter() - begun)
        throughput[size] = size / statistics.median(times)
    return Timing(
        float(np.percentile(samples, 50) / 1e3), float(np.percentile(samples, 99) / 1e3), throughput
    )


def _tile(rows: Any, reps: int) -> Any:
    if reps == 1:
        return rows
    if hasattr(rows, "iloc"):
        import pandas as pd

        return pd.concat([rows] * reps, ignore_index=True)
    return np.concatenate([rows] * reps)
