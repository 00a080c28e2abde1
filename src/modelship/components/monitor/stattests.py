"""Evidently 0.7.23's per-column drift tests, with the reference side computed once.

Evidently recomputes everything about the reference on every report (sorting, std, value
counts, histograms) and renders plotly widgets inside ``run()``; a monitor that compares the same
reference with window after window only needs the current side. Each score below repeats the
arithmetic of ``evidently/legacy/calculations/stattests/<test>.py`` in the same order (the same
set-built key order, the same numpy calls on the same dtypes), so scores are bit-identical to
Evidently's, not just close: a score near its threshold must fall on the same side.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats
from scipy.spatial import distance

Kind = Literal["num", "cat"]
Floats = npt.NDArray[np.float64]

#: ``StatTest(default_threshold=...)`` of each test in Evidently
DEFAULT_THRESHOLD: dict[str, float] = {
    "ks": 0.05,
    "chisquare": 0.05,
    "z": 0.05,
    "wasserstein": 0.1,
    "jensenshannon": 0.1,
    "psi": 0.1,
}
#: the kinds a test may be *asked for* on (Evidently's registry raises otherwise); its automatic
#: choice still uses chisquare and z on numeric columns of few values
FORCEABLE_ON: dict[str, frozenset[str]] = {
    "ks": frozenset({"num"}),
    "wasserstein": frozenset({"num"}),
    "psi": frozenset({"num", "cat"}),
    "jensenshannon": frozenset({"num", "cat"}),
    "chisquare": frozenset({"cat"}),
    "z": frozenset({"cat"}),
}


def finite(values: pd.Series) -> pd.Series:
    """The values a test sees: Evidently drops ±inf and NaN first (``get_one_column_drift``)."""
    return values.replace([-np.inf, np.inf], np.nan).dropna()


def is_drift(method: str, score: float, threshold: float) -> bool:
    """Each test's own comparison: ks flags p <= t, chisquare and z p < t, distances >= t."""
    if method == "ks":
        return score <= threshold
    if method in ("chisquare", "z"):
        return score < threshold
    return score >= threshold


def reference_values(name: str, values: pd.Series, kind: Kind) -> pd.Series:
    """The cleaned reference column; raises where Evidently would refuse it on every window."""
    clean = finite(values)
    if clean.empty:
        raise ValueError(
            f"reference column {name!r} has no finite values (all NaN or ±inf): "
            "drop it from the monitored columns or fix the reference data"
        )
    if kind == "num" and not pd.api.types.is_numeric_dtype(clean):
        raise ValueError(
            f"reference column {name!r} is declared 'num' but holds {clean.dtype} values: "
            "declare it 'cat' or fix the reference data"
        )
    return clean


class ReferenceColumn:
    """One reference column, cleaned, with what every test needs from it computed once."""

    def __init__(self, name: str, values: pd.Series, kind: Kind) -> None:
        clean = reference_values(name, values, kind)
        self.kind: Kind = kind
        self.values = clean
        self.size = len(clean)
        # unique() keeps first-seen order, so the sets built from it below iterate in the same
        # order as Evidently's, and sums over them add up in the same order
        self.unique: Any = clean.unique()
        self.nunique = int(clean.nunique())
        if kind == "cat" or self.nunique <= 20:
            _ = self.counts  # the columns whose tests count values; others never need it
        if kind == "num":
            # native dtype for histogram counts (float32 bins stay float32, as in Evidently);
            # float64 for wasserstein, which scipy casts to before sorting
            self.sorted: npt.NDArray[Any] = np.sort(clean.to_numpy())
            self.sorted64: Floats = np.asarray(self.sorted, dtype=np.float64)
            self.std = float(np.std(clean))  # pandas' std, ddof=0: what Evidently divides by

    @cached_property
    def counts(self) -> dict[Any, int]:
        """``dict(value_counts())`` as Evidently builds it: the same keys and value types."""
        return dict(self.values.value_counts())

    def default_method(self, current: pd.Series) -> str:
        """Evidently's automatic choice (``registry.py::_get_default_stattest``)."""
        # distinct values over both sides; past 5 the exact number no longer matters
        n_values = (
            self.nunique if self.nunique > 5 else int(pd.concat([self.values, current]).nunique())
        )
        if self.size <= 1000:
            if self.kind == "num" and n_values > 5:
                return "ks"
            return "chisquare" if n_values > 2 else "z"
        if self.kind == "num" and n_values > 5:
            return "wasserstein"
        return "jensenshannon"

    def keys(self, current: pd.Series) -> list[Any]:
        """``utils.py::get_unique_not_nan_values_list_from_series``, in its set order."""
        return list(set(self.unique) | set(current.unique()))


def _ks(ref: ReferenceColumn, cur: pd.Series) -> float:
    return float(stats.ks_2samp(ref.sorted, cur)[1])


def _wasserstein(ref: ReferenceColumn, cur: pd.Series) -> float:
    # scipy's _cdf_distance(p=1) step by step, with the reference already sorted
    u_sorted = ref.sorted64
    v_sorted = np.sort(np.asarray(cur, dtype=np.float64))
    all_values = np.concatenate((u_sorted, v_sorted))
    all_values.sort(kind="mergesort")
    deltas = np.diff(all_values)
    u_cdf = u_sorted.searchsorted(all_values[:-1], "right") / u_sorted.size
    v_cdf = v_sorted.searchsorted(all_values[:-1], "right") / v_sorted.size
    distance_ = float(np.vecdot(np.abs(u_cdf - v_cdf), deltas))
    return distance_ / max(ref.std, 0.001)


def _binned(ref: ReferenceColumn, cur: pd.Series, fill_zeroes: bool) -> tuple[Floats, Floats]:
    """``utils.py::get_binned_data`` (its ``n`` is unused there too)."""
    if ref.kind == "num" and ref.nunique > 20:
        # the Sturges bins span both sides, so they change with each window; the reference's
        # counts per bin are np.histogram's own searchsorted on the sorted values
        edges = np.histogram_bin_edges(np.concatenate((ref.sorted, cur.to_numpy())), "sturges")
        bounds = np.concatenate(
            (
                ref.sorted.searchsorted(edges[:-1], "left"),
                ref.sorted.searchsorted(edges[-1:], "right"),
            )
        )
        ref_share: Floats = np.diff(bounds) / ref.size
        cur_share: Floats = np.histogram(cur, edges)[0] / len(cur)
    else:
        keys = ref.keys(cur)
        ref_counts = {**dict.fromkeys(keys, 0), **ref.counts}
        cur_counts = {**dict.fromkeys(keys, 0), **dict(cur.value_counts())}
        ref_share = np.array([ref_counts[key] / ref.size for key in keys])
        cur_share = np.array([cur_counts[key] / len(cur) for key in keys])
    if fill_zeroes:
        for share in (ref_share, cur_share):
            smallest = min(share[share != 0])
            np.place(share, share == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001)
    return ref_share, cur_share


def _jensenshannon(ref: ReferenceColumn, cur: pd.Series) -> float:
    ref_share, cur_share = _binned(ref, cur, fill_zeroes=False)
    return float(distance.jensenshannon(ref_share, cur_share, None))


def _psi(ref: ReferenceColumn, cur: pd.Series) -> float:
    ref_share, cur_share = _binned(ref, cur, fill_zeroes=True)
    return float(np.sum((ref_share - cur_share) * np.log(ref_share / cur_share)))


def _chisquare(ref: ReferenceColumn, cur: pd.Series) -> float:
    keys = ref.keys(cur)
    ref_counts = {**dict.fromkeys(keys, 0), **ref.counts}
    cur_counts = {**dict.fromkeys(keys, 0), **dict(cur.value_counts())}
    k_norm = cur.shape[0] / ref.size
    expected = [ref_counts[key] * k_norm for key in keys]
    observed = [cur_counts[key] for key in keys]
    return float(stats.chisquare(observed, expected)[1])


def _z(ref: ReferenceColumn, cur: pd.Series) -> float:
    if ref.nunique == 1 and cur.nunique() == 1 and ref.unique[0] == cur.unique()[0]:
        return 1.0
    first = sorted(ref.keys(cur))[0]
    n1, n2 = ref.size, len(cur)
    # shares of values other than the first key, as Evidently's 0/1 apply() then sum() gives
    p1 = float(n1 - ref.counts.get(first, 0)) / n1
    p2 = float(int((cur != first).sum())) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - stats.norm.cdf(np.abs(z))))


#: a test's score for one reference column and the current window's cleaned values
SCORES: dict[str, Callable[[ReferenceColumn, pd.Series], float]] = {
    "ks": _ks,
    "wasserstein": _wasserstein,
    "jensenshannon": _jensenshannon,
    "psi": _psi,
    "chisquare": _chisquare,
    "z": _z,
}
