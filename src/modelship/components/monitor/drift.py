"""Data drift of a window against a reference: the fast path and plain Evidently, same verdicts.

:class:`Reference` precomputes the reference once and scores each window with
:mod:`components.monitor.stattests` (Evidently 0.7.23's tests, bit-identical scores, about 80x
faster than a ``DataDriftPreset`` run, which renders its widgets whether or not anyone looks).
:func:`evidently_report` runs the preset itself: the reference implementation the fast path is
tested against, and the HTML report a person reads.

Where Evidently raises on a window (a column with no finite values, text in a numeric column),
that column is reported as skipped instead, and the share of drifted columns counts the columns
that were tested, so one broken feature does not hide the others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from modelship.components.monitor.stattests import (
    DEFAULT_THRESHOLD,
    FORCEABLE_ON,
    SCORES,
    Kind,
    ReferenceColumn,
    finite,
    is_drift,
    reference_values,
)

if TYPE_CHECKING:
    from evidently.core.report import Snapshot


@dataclass(frozen=True)
class ColumnDrift:
    #: Evidently's stattest id ("ks", "wasserstein", "psi", ...); "" when skipped before a choice
    method: str
    score: float
    threshold: float
    drifted: bool
    #: why the column was not tested in this window (then score is NaN and drifted False)
    skipped: str | None = None


@dataclass(frozen=True)
class DriftReport:
    columns: dict[str, ColumnDrift]
    drifted_count: int
    #: drifted_count over the columns tested (skipped ones left out)
    share: float
    dataset_drift: bool
    #: rows in the window, before NaN and ±inf are dropped per column
    rows: int

    @property
    def drifted_columns(self) -> list[str]:
        return [name for name, column in self.columns.items() if column.drifted]

    @property
    def skipped_columns(self) -> dict[str, str]:
        return {name: c.skipped for name, c in self.columns.items() if c.skipped is not None}


@dataclass(frozen=True)
class DriftOptions:
    """Which test and threshold each column gets, and the share of drifted columns that counts.

    Evidently's priorities: a column's own method, else ``method``, else its automatic choice;
    the threshold likewise, else the chosen test's default. Dataset drift when the share of
    drifted columns is at least ``drift_share``.
    """

    method: str | None = None
    threshold: float | None = None
    per_column_method: Mapping[str, str] = field(default_factory=dict)
    per_column_threshold: Mapping[str, float] = field(default_factory=dict)
    drift_share: float = 0.5

    def check(self, kinds: Mapping[str, Kind]) -> None:
        """Refuse, at load, what Evidently would refuse mid-run, and names that match nothing."""
        problems = []
        unknown = sorted(
            (set(self.per_column_method) | set(self.per_column_threshold)) - set(kinds)
        )
        if unknown:
            problems.append(f"per-column options for columns not monitored: {unknown}")
        for column, kind in kinds.items():
            method = self.method_for(column)
            if method is not None and kind not in FORCEABLE_ON.get(method, frozenset()):
                allowed = sorted(m for m, on in FORCEABLE_ON.items() if kind in on)
                problems.append(
                    f"{column!r} ({kind}) cannot use method {method!r}; use one of {allowed}"
                )
        if not 0.0 <= self.drift_share <= 1.0:
            problems.append(f"drift_share must lie in [0, 1], got {self.drift_share}")
        if problems:
            raise ValueError("invalid drift options: " + "; ".join(problems))

    def method_for(self, column: str) -> str | None:
        return self.per_column_method.get(column, self.method)

    def threshold_for(self, column: str, method: str) -> float:
        chosen = self.per_column_threshold.get(column, self.threshold)
        if chosen is not None:
            return chosen
        return DEFAULT_THRESHOLD[method] if method else math.nan


def _checked_kinds(
    kinds: Mapping[str, str], reference: pd.DataFrame, options: DriftOptions
) -> dict[str, Kind]:
    """The kinds, typed, once they and the options fit each other and the reference."""
    if not kinds:
        raise ValueError("no columns to monitor: give kinds as {column: 'num' | 'cat'}")
    bad = {c: k for c, k in kinds.items() if k not in ("num", "cat")}
    if bad:
        raise ValueError(f"column kinds must be 'num' or 'cat', got {bad}")
    missing = [c for c in kinds if c not in reference]
    if missing:
        raise ValueError(f"reference data lacks monitored columns {missing}")
    checked = {c: cast(Kind, k) for c, k in kinds.items()}
    options.check(checked)
    return checked


def skip_reason(current: pd.Series, kind: Kind) -> str | None:
    """Why Evidently could not test this (cleaned) current column; None when it can."""
    if current.empty:
        return "no finite values in this window (all NaN or ±inf); Evidently cannot test it"
    if kind == "num" and not pd.api.types.is_numeric_dtype(current):
        return f"{current.dtype} values in a numeric column; Evidently tests numbers only"
    return None


def _tally(columns: dict[str, ColumnDrift], rows: int, drift_share: float) -> DriftReport:
    """Evidently's ``get_dataset_drift`` over the columns that were tested."""
    tested = [c for c in columns.values() if c.skipped is None]
    count = sum(c.drifted for c in tested)
    share = count / len(tested) if tested else 0.0
    dataset_drift = bool(tested) and share >= drift_share
    return DriftReport(columns, count, share, dataset_drift, rows)


def _skipped(options: DriftOptions, column: str, reason: str) -> ColumnDrift:
    method = options.method_for(column) or ""
    return ColumnDrift(method, math.nan, options.threshold_for(column, method), False, reason)


class Reference:
    """A reference frame, precomputed once, that windows are compared with."""

    def __init__(
        self,
        reference: pd.DataFrame,
        kinds: Mapping[str, str],
        *,
        method: str | None = None,
        threshold: float | None = None,
        per_column_method: Mapping[str, str] | None = None,
        per_column_threshold: Mapping[str, float] | None = None,
        drift_share: float = 0.5,
    ) -> None:
        self.options = DriftOptions(
            method,
            threshold,
            dict(per_column_method or {}),
            dict(per_column_threshold or {}),
            drift_share,
        )
        self.kinds = _checked_kinds(kinds, reference, self.options)
        self._columns = {c: ReferenceColumn(c, reference[c], k) for c, k in self.kinds.items()}

    def compare(self, current: pd.DataFrame) -> DriftReport:
        missing = [c for c in self.kinds if c not in current]
        if missing:
            raise ValueError(f"the window lacks monitored columns {missing}")
        columns = {
            name: self._column(name, ref, current[name]) for name, ref in self._columns.items()
        }
        return _tally(columns, len(current), self.options.drift_share)

    def _column(self, name: str, ref: ReferenceColumn, values: pd.Series) -> ColumnDrift:
        current = finite(values)
        reason = skip_reason(current, ref.kind)
        if reason is not None:
            return _skipped(self.options, name, reason)
        method = self.options.method_for(name) or ref.default_method(current)
        threshold = self.options.threshold_for(name, method)
        score = SCORES[method](ref, current)
        return ColumnDrift(method, score, threshold, is_drift(method, score, threshold))


def evidently_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    kinds: Mapping[str, str],
    *,
    method: str | None = None,
    threshold: float | None = None,
    per_column_method: Mapping[str, str] | None = None,
    per_column_threshold: Mapping[str, float] | None = None,
    drift_share: float = 0.5,
) -> tuple[DriftReport, Snapshot | None]:
    """Evidently's ``DataDriftPreset`` on the same columns and options, read into a DriftReport.

    The snapshot is for ``save_html``; it is None when every column was skipped (Evidently cannot
    run on no columns). Evidently is imported here, not at module load: it takes ~5 s.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    options = DriftOptions(
        method,
        threshold,
        dict(per_column_method or {}),
        dict(per_column_threshold or {}),
        drift_share,
    )
    checked = _checked_kinds(kinds, reference, options)
    for name, kind in checked.items():
        reference_values(name, reference[name], kind)
    missing = [c for c in checked if c not in current]
    if missing:
        raise ValueError(f"the window lacks monitored columns {missing}")
    reasons = {c: skip_reason(finite(current[c]), k) for c, k in checked.items()}
    skipped = {c: _skipped(options, c, r) for c, r in reasons.items() if r is not None}
    tested = [c for c in checked if c not in skipped]
    if not tested:
        return _tally(skipped, len(current), drift_share), None
    definition = DataDefinition(
        numerical_columns=[c for c in tested if checked[c] == "num"],
        categorical_columns=[c for c in tested if checked[c] == "cat"],
    )
    preset = DataDriftPreset(
        columns=tested,
        method=method,
        threshold=threshold,
        per_column_method={c: m for c, m in options.per_column_method.items() if c in tested},
        per_column_threshold={c: t for c, t in options.per_column_threshold.items() if c in tested},
        drift_share=drift_share,
    )
    # ±inf as NaN up front: Evidently's DriftedColumnsCount drops ±inf only from columns that also
    # hold NaN and scores the others NaN (not drifted), contradicting its own per-column ValueDrift
    # tests, which always drop them; with no ±inf left, the two agree
    snapshot = Report([preset], include_tests=True).run(
        Dataset.from_pandas(_inf_as_nan(current[tested]), data_definition=definition),
        Dataset.from_pandas(_inf_as_nan(reference[tested]), data_definition=definition),
    )
    tested_columns, count, share, dataset_drift = _read_snapshot(snapshot.dict())
    columns = {c: tested_columns[c] if c in tested_columns else skipped[c] for c in checked}
    return DriftReport(columns, count, share, dataset_drift, len(current)), snapshot


def _inf_as_nan(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.replace([np.inf, -np.inf], np.nan)


def _read_snapshot(
    snapshot: dict[str, Any],
) -> tuple[dict[str, ColumnDrift], int, float, bool]:
    """Per-column results, drifted count, share and dataset verdict from ``Snapshot.dict()``.

    A ValueDrift's verdict is only in its test (FAIL is drift), matched by metric id; its method
    is the id we asked for, or the display name of the test Evidently chose.
    """
    from evidently.legacy.calculations import stattests

    method_id = {
        test.display_name: test.name
        for test in vars(stattests).values()
        if isinstance(test, stattests.StatTest)
    }
    failed = {
        t["metric_config"]["metric_id"]: t["status"].value == "FAIL" for t in snapshot["tests"]
    }
    columns: dict[str, ColumnDrift] = {}
    count, share, dataset_drift = 0, 0.0, False
    for metric in snapshot["metrics"]:
        config = metric["config"]
        if config["type"].endswith(":ValueDrift"):
            method = method_id.get(config["method"], config["method"])
            columns[config["column"]] = ColumnDrift(
                method, float(metric["value"]), float(config["threshold"]), failed[metric["id"]]
            )
        elif config["type"].endswith(":DriftedColumnsCount"):
            count, share = int(metric["value"]["count"]), float(metric["value"]["share"])
            dataset_drift = failed[metric["id"]]
    return columns, count, share, dataset_drift
