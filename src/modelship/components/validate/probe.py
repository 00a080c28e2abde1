"""Load a model and predict, in a clean process: ``python -m components.validate.probe``.

A model that crashes the interpreter, hangs, or leaks state while loading cannot take the
pipeline step down with it. Only a digest-checked local copy is ever passed in.
Writes ``probe.json`` (what happened) and ``predictions.npz`` (values, scores, classes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np


def _predict(model_dir: str, features: Path, out: Path, report: dict[str, Any]) -> None:
    """Fill ``report`` as it goes, so a failure still says in which phase it happened."""
    import mlflow.pyfunc
    import pandas as pd

    report["phase"] = "load"
    t0 = time.perf_counter()
    model = mlflow.pyfunc.load_model(model_dir)
    report["load_s"] = round(time.perf_counter() - t0, 4)
    frame = pd.read_parquet(features)
    report["phase"] = "predict"
    t0 = time.perf_counter()
    raw = model.predict(frame)
    report["predict_s"] = round(time.perf_counter() - t0, 4)
    values = np.asarray(raw.to_numpy() if hasattr(raw, "to_numpy") else raw)
    scores = None
    classes: list[Any] = []
    native = model.get_raw_model() if hasattr(model, "get_raw_model") else None
    if native is not None and hasattr(native, "predict_proba"):
        try:
            scores = np.asarray(native.predict_proba(frame), dtype=np.float64)
            classes = list(getattr(native, "classes_", []))
        except Exception as e:  # scores are optional: metrics that need them say so later
            report["scores_error"] = f"{type(e).__name__}: {e}"
    report.update(
        phase="done",
        rows=len(frame),
        shape=list(values.shape),
        dtype=str(values.dtype),
        n_nan=int(np.isnan(values).sum()) if values.dtype.kind in "fc" else 0,
        n_inf=int(np.isinf(values).sum()) if values.dtype.kind in "fc" else 0,
        has_scores=scores is not None,
    )
    arrays: dict[str, Any] = {"values": values, "classes": np.asarray(classes)}
    if scores is not None:
        arrays["scores"] = scores
    np.savez(out / "predictions.npz", **arrays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir")
    parser.add_argument("features", type=Path, help="parquet file of model inputs")
    parser.add_argument("out", type=Path, help="folder for probe.json and predictions.npz")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"phase": "start"}
    try:
        _predict(args.model_dir, args.features, args.out, report)
        code = 0
    except BaseException as e:
        report["error"] = f"{type(e).__name__}: {e}"
        report["traceback"] = traceback.format_exc(limit=8)
        code = 1
    (args.out / "probe.json").write_text(json.dumps(report, indent=2, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
