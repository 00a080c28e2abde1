"""A log-bucketed latency histogram: fixed memory, percentiles within half a percent.

Buckets grow by ``1 + precision`` from 1 us, so any percentile read from it is within
``precision`` (relative) of the exact one, from microseconds to minutes, in a few thousand
counters; the exact minimum and maximum are kept beside them.
"""

from __future__ import annotations

import math

import numpy as np

_FLOOR_S = 1e-6


class LatencyHistogram:
    def __init__(self, precision: float = 0.005, ceiling_s: float = 600.0) -> None:
        self._log_base = math.log1p(precision)
        self.counts = np.zeros(self._index(ceiling_s) + 2, dtype=np.int64)
        self.count = 0
        self.min_s = math.inf
        self.max_s = 0.0

    def _index(self, seconds: float) -> int:
        if seconds <= _FLOOR_S:
            return 0
        return int(math.log(seconds / _FLOOR_S) / self._log_base) + 1

    def index(self, seconds: float) -> int:
        """The bucket that ``seconds`` falls in (the last one past the ceiling)."""
        return min(self._index(seconds), len(self.counts) - 1)

    def record(self, seconds: float) -> None:
        self.counts[min(self._index(seconds), len(self.counts) - 1)] += 1
        self.count += 1
        self.min_s = min(self.min_s, seconds)
        self.max_s = max(self.max_s, seconds)

    def _upper(self, index: int) -> float:
        return _FLOOR_S * math.exp(index * self._log_base)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) in seconds; the bucket's upper edge, capped at the max."""
        if self.count == 0:
            return math.nan
        if q >= 100:
            return self.max_s
        rank = max(1, math.ceil(self.count * q / 100))
        index = int(np.searchsorted(np.cumsum(self.counts), rank))
        return min(self._upper(index), self.max_s)

    def summary_ms(self) -> dict[str, float]:
        names = {"p50": 50, "p90": 90, "p99": 99, "p99.9": 99.9}
        out = {k: round(self.percentile(q) * 1e3, 3) for k, q in names.items()}
        out["max"] = round(self.max_s * 1e3, 3) if self.count else math.nan
        return out

    def buckets_ms(self) -> tuple[np.ndarray, np.ndarray]:
        """Non-empty buckets: upper edges in ms and counts (for the histogram plot)."""
        nonzero = np.nonzero(self.counts)[0]
        edges = np.array([self._upper(int(i)) * 1e3 for i in nonzero])
        return edges, self.counts[nonzero]

    def sparse(self) -> dict[str, int]:
        """Non-empty buckets by index, JSON-ready: what a snapshot sends over the wire."""
        return {str(int(i)): int(self.counts[i]) for i in np.nonzero(self.counts)[0]}

    @classmethod
    def from_sparse(cls, buckets: dict[str, int]) -> LatencyHistogram:
        """A histogram from :meth:`sparse` buckets; min and max become bucket edges."""
        hist = cls()
        for key, count in buckets.items():
            if count < 0:
                raise ValueError(f"negative count {count} in bucket {key}")
            hist.counts[int(key)] += count
        hist.count = int(hist.counts.sum())
        nonzero = np.nonzero(hist.counts)[0]
        if len(nonzero):
            hist.min_s = hist._upper(int(nonzero[0]))
            hist.max_s = hist._upper(int(nonzero[-1]))
        return hist


def sparse_minus(later: dict[str, int], earlier: dict[str, int]) -> dict[str, int]:
    """The buckets recorded between two snapshots of one histogram."""
    out = {k: v - earlier.get(k, 0) for k, v in later.items()}
    return {k: v for k, v in out.items() if v > 0}
