"""One drift window judged by plain Evidently and by the fast path, timed, with the same verdicts.

    .venv/bin/python benchmarks/drift.py [--repeats 5]

In one process: a seeded reference of 20,000 rows x 30 float columns and a 5,000-row window
(eight columns shifted by 0.05 to 0.4 sd), then the median of ``--repeats`` runs of

- plain Evidently: :func:`components.monitor.drift.evidently_report` (a ``DataDriftPreset`` run
  with tests, read into a DriftReport), and the snapshot's ``save_html`` on its own;
- the fast path: building :class:`components.monitor.drift.Reference` (once per reference) and
  ``Reference.compare`` (once per window).

Each is run once first, untimed, so imports and first-call caches are not in the medians. Exits
1 when the two disagree on any column's method, threshold or verdict, on the dataset verdict,
or on a score by more than 1e-9.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from modelship.components.monitor.drift import DriftReport, Reference, evidently_report

T = TypeVar("T")
COLUMNS = 30


def _frames(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    names = [f"f{i}" for i in range(COLUMNS)]
    scale, loc = rng.uniform(0.5, 5, COLUMNS), rng.uniform(-3, 3, COLUMNS)
    reference = pd.DataFrame(rng.normal(size=(20_000, COLUMNS)) * scale + loc, columns=names)
    shift = np.zeros(COLUMNS)
    shift[:8] = np.linspace(0.05, 0.4, 8)
    window = rng.normal(loc=shift, size=(5_000, COLUMNS)) * scale + loc
    return reference, pd.DataFrame(window, columns=names)


def _median(repeats: int, run: Callable[[], T]) -> tuple[float, T]:
    result = run()  # untimed: first-call costs are not what a monitor pays per window
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def _disagreements(fast: DriftReport, plain: DriftReport) -> list[str]:
    problems = []
    for name, ours in fast.columns.items():
        theirs = plain.columns[name]
        same = (ours.method, ours.threshold, ours.drifted) == (
            theirs.method,
            theirs.threshold,
            theirs.drifted,
        )
        if not same or abs(ours.score - theirs.score) > 1e-9:
            problems.append(f"{name}: fast {ours} vs Evidently {theirs}")
    if (fast.drifted_count, fast.dataset_drift) != (plain.drifted_count, plain.dataset_drift):
        problems.append(
            f"dataset: fast {fast.drifted_count} drifted ({fast.dataset_drift}) vs "
            f"Evidently {plain.drifted_count} ({plain.dataset_drift})"
        )
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    warnings.simplefilter("ignore")  # Evidently's numpy/pandas deprecation noise
    reference, window = _frames()
    kinds = dict.fromkeys(reference.columns, "num")

    plain_s, (plain, snapshot) = _median(
        repeats, lambda: evidently_report(reference, window, kinds)
    )
    assert snapshot is not None
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "drift.html"
        html_s, _ = _median(repeats, lambda: snapshot.save_html(str(html)))
        html_mb = html.stat().st_size / 1e6
    build_s, fast_reference = _median(repeats, lambda: Reference(reference, kinds))
    compare_s, fast = _median(repeats, lambda: fast_reference.compare(window))

    rows = [
        ("plain Evidently: evidently_report (DataDriftPreset run)", plain_s),
        (f"plain Evidently: snapshot.save_html ({html_mb:.1f} MB)", html_s),
        ("fast path: Reference(...) build, once per reference", build_s),
        ("fast path: Reference.compare, per window", compare_s),
    ]
    print(f"20,000 x {COLUMNS} reference, 5,000-row window, median of {repeats}")
    for label, seconds in rows:
        print(f"  {label:<58} {seconds * 1e3:9.1f} ms")
    print(f"  {'ratio evidently_report / compare':<58} {plain_s / compare_s:9.0f} x")
    print(
        f"  {'ratio evidently_report / (build + compare)':<58} {plain_s / (build_s + compare_s):9.0f} x"
    )
    diff = max(abs(fast.columns[c].score - plain.columns[c].score) for c in kinds)
    print(
        f"verdicts: {fast.drifted_count}/{COLUMNS} drifted, share {fast.share:.3f}, "
        f"dataset drift {fast.dataset_drift}; max |score difference| {diff:.1e}"
    )
    problems = _disagreements(fast, plain)
    for problem in problems:
        print(f"DIFFERENT: {problem}")
    print("verdicts identical" if not problems else f"{len(problems)} disagreements")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
