"""The fast drift path gives Evidently's DataDriftPreset verdicts and scores, window by window."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelship.components.monitor.drift import DriftReport, Reference, evidently_report

Case = tuple[pd.DataFrame, pd.DataFrame, dict[str, str], dict[str, Any]]


def _numeric(rows: int, columns: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 5, columns)
    loc = rng.uniform(-3, 3, columns)
    values = rng.normal(size=(rows, columns)) * scale + loc
    return pd.DataFrame(values, columns=[f"f{i}" for i in range(columns)])


def _window(
    reference: pd.DataFrame, rows: int, shift_sd: float, shifted: int, seed: int
) -> pd.DataFrame:
    """Rows resampled from the reference, jittered, the first ``shifted`` columns moved."""
    rng = np.random.default_rng(seed)
    sd = reference.std().to_numpy()
    window = reference.sample(rows, replace=True, random_state=seed).reset_index(drop=True)
    window = window + rng.normal(0, 1e-3, window.shape) * sd
    window.iloc[:, :shifted] += shift_sd * sd[:shifted]
    return window


def _nums(frame: pd.DataFrame) -> dict[str, str]:
    return dict.fromkeys(frame.columns, "num")


def _mixed(rows: int, p: list[float], seed: int) -> pd.DataFrame:
    """Few-valued numbers, categories, an integer column and a 0/1 prediction."""
    rng = np.random.default_rng(seed)
    two = [p[0] / (p[0] + p[1]), p[1] / (p[0] + p[1])]
    return pd.DataFrame(
        {
            "tri": rng.choice([0.0, 1.0, 2.0], rows, p=p),
            "five": rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], rows),
            "bin": rng.choice([0.0, 1.0], rows, p=two),
            "age": rng.integers(18, 90, rows),
            "x": rng.normal(size=rows) + (p[0] < 0.5) * 0.3,
            "city": rng.choice(["ams", "ber", "cph", "dub"], rows, p=[*(0.8 * q for q in p), 0.2]),
            "pred": rng.choice([0, 1], rows, p=two),
        }
    )


MIXED_KINDS = {"tri": "num", "five": "num", "bin": "num", "age": "num", "x": "num"} | {
    "city": "cat",
    "pred": "cat",
}


def _no_drift() -> Case:
    ref = _numeric(2000, 30, 1)
    return ref, _window(ref, 500, 0.0, 0, 2), _nums(ref), {}


def _mild_shift() -> Case:
    ref = _numeric(2000, 30, 3)
    return ref, _window(ref, 500, 0.15, 10, 4), _nums(ref), {}


def _strong_shift() -> Case:
    ref = _numeric(2000, 30, 5)
    return ref, _window(ref, 500, 0.5, 18, 6), _nums(ref), {}


def _ks_small_reference() -> Case:
    ref = _numeric(800, 10, 7)
    return ref, _window(ref, 300, 0.25, 5, 8), _nums(ref), {}


def _psi_forced() -> Case:
    ref = _numeric(2000, 10, 9)
    return ref, _window(ref, 500, 0.4, 6, 10), _nums(ref), {"method": "psi", "threshold": 0.2}


def _per_column_options() -> Case:
    ref = _numeric(2000, 8, 11)
    options = {
        "per_column_method": {"f0": "psi", "f1": "ks", "f2": "jensenshannon"},
        "per_column_threshold": {"f0": 0.05, "f3": 0.05},
        "drift_share": 0.25,
    }
    return ref, _window(ref, 500, 0.1, 4, 12), _nums(ref), options


def _mixed_large() -> Case:
    p0, p1 = [0.5, 0.3, 0.2], [0.4, 0.35, 0.25]
    return _mixed(3000, p0, 13), _mixed(600, p1, 14), MIXED_KINDS, {}


def _mixed_small() -> Case:
    p0, p1 = [0.5, 0.3, 0.2], [0.4, 0.35, 0.25]
    return _mixed(800, p0, 15), _mixed(400, p1, 16), MIXED_KINDS, {}


def _mixed_psi() -> Case:
    p0, p1 = [0.5, 0.3, 0.2], [0.45, 0.3, 0.25]
    return _mixed(3000, p0, 17), _mixed(600, p1, 18), MIXED_KINDS, {"method": "psi"}


def _nan_and_inf() -> Case:
    ref = _numeric(2000, 8, 19)
    window = _window(ref, 500, 0.2, 4, 20)
    ref.iloc[::7, 0] = np.nan
    ref.iloc[3::11, 5] = -np.inf
    window.iloc[::5, 1] = np.inf  # ±inf without NaN: see evidently_report
    window.iloc[::3, 2] = np.nan
    window.iloc[1::4, 2] = -np.inf
    return ref, window, _nums(ref), {}


def _float32() -> Case:
    ref = _numeric(2000, 10, 21)
    window = _window(ref, 500, 0.12, 5, 22)
    return ref.astype(np.float32), window.astype(np.float32), _nums(ref), {}


def _float32_psi() -> Case:
    ref, window, kinds, _ = _float32()
    return ref, window, kinds, {"method": "psi"}


CASES: dict[str, Callable[[], Case]] = {
    "no drift": _no_drift,
    "mild shift": _mild_shift,
    "strong shift": _strong_shift,
    "reference of 800 rows (ks)": _ks_small_reference,
    "psi forced, threshold 0.2": _psi_forced,
    "per-column options": _per_column_options,
    "few values and categories, 3000 rows": _mixed_large,
    "few values and categories, 800 rows": _mixed_small,
    "few values and categories, psi": _mixed_psi,
    "NaN and inf": _nan_and_inf,
    "float32": _float32,
    "float32, psi": _float32_psi,
}


def assert_same(fast: DriftReport, plain: DriftReport) -> None:
    assert fast.columns.keys() == plain.columns.keys()
    for name, ours in fast.columns.items():
        theirs = plain.columns[name]
        where = f"{name}: {ours} vs Evidently's {theirs}"
        assert (ours.method, ours.threshold, ours.drifted) == (
            theirs.method,
            theirs.threshold,
            theirs.drifted,
        ), where
        assert ours.skipped == theirs.skipped, where
        both_nan = math.isnan(ours.score) and math.isnan(theirs.score)
        assert both_nan or abs(ours.score - theirs.score) <= 1e-9, where
    assert (fast.drifted_count, fast.share, fast.dataset_drift, fast.rows) == (
        plain.drifted_count,
        plain.share,
        plain.dataset_drift,
        plain.rows,
    )


@pytest.mark.parametrize("case", CASES)
def test_fast_path_equals_evidently(case: str) -> None:
    reference, window, kinds, options = CASES[case]()
    plain, snapshot = evidently_report(reference, window, kinds, **options)
    assert snapshot is not None
    fast = Reference(reference, kinds, **options).compare(window)
    assert_same(fast, plain)
    # Evidently's own count agrees with its per-column verdicts (no ±inf reaches it)
    assert plain.drifted_count == len(plain.drifted_columns)


def test_cases_cover_every_test_and_both_verdicts() -> None:
    """The cases above mean something only if they reach each test, drifted and not."""
    seen: set[tuple[str, bool]] = set()
    for make in CASES.values():
        reference, window, kinds, options = make()
        report = Reference(reference, kinds, **options).compare(window)
        seen |= {(c.method, c.drifted) for c in report.columns.values()}
    methods = {"ks", "wasserstein", "psi", "jensenshannon", "chisquare", "z"}
    assert {m for m, _ in seen} == methods
    assert {m for m, drifted in seen if drifted} >= {"ks", "wasserstein", "psi", "chisquare"}


def test_all_nan_column_in_window_is_skipped_not_fatal() -> None:
    reference = _numeric(2000, 6, 23)
    window = _window(reference, 500, 0.5, 3, 24)
    window["f1"] = np.nan
    window["f4"] = np.inf
    fast = Reference(reference, _nums(reference), drift_share=0.5).compare(window)
    plain, snapshot = evidently_report(reference, window, _nums(reference), drift_share=0.5)
    assert snapshot is not None
    assert_same(fast, plain)
    assert set(fast.skipped_columns) == {"f1", "f4"}
    assert not fast.columns["f1"].drifted and math.isnan(fast.columns["f1"].score)
    assert fast.drifted_count == 2 and fast.share == 0.5 and fast.dataset_drift  # f0, f2 of 4


def test_window_with_every_column_empty_is_not_drift() -> None:
    reference = _numeric(1500, 3, 25)
    window = pd.DataFrame(np.nan, index=range(50), columns=reference.columns)
    fast = Reference(reference, _nums(reference)).compare(window)
    plain, snapshot = evidently_report(reference, window, _nums(reference))
    assert snapshot is None
    assert_same(fast, plain)
    assert len(fast.skipped_columns) == 3 and not fast.dataset_drift


def test_empty_reference_column_is_named() -> None:
    reference = _numeric(1500, 3, 26)
    reference["f2"] = np.nan
    with pytest.raises(ValueError, match="reference column 'f2' has no finite values"):
        Reference(reference, _nums(reference))
    with pytest.raises(ValueError, match="reference column 'f2' has no finite values"):
        evidently_report(reference, reference, _nums(reference))


def test_options_evidently_would_refuse_are_refused_at_load() -> None:
    reference = _mixed(1500, [0.5, 0.3, 0.2], 27)
    with pytest.raises(ValueError, match=r"'x' \(num\) cannot use method 'chisquare'"):
        Reference(reference, MIXED_KINDS, per_column_method={"x": "chisquare"})
    with pytest.raises(ValueError, match=r"'city' \(cat\) cannot use method 'ks'"):
        Reference(reference, MIXED_KINDS, method="ks")
    with pytest.raises(ValueError, match="columns not monitored: \\['nope'\\]"):
        Reference(reference, MIXED_KINDS, per_column_threshold={"nope": 0.1})
