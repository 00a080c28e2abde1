"""Model checks: what the artifacts may contain, and what the model does when loaded.

Loading happens in a separate process (:mod:`components.validate.probe`) with a timeout; what
comes back is checked here: loads, predicts on every row, no NaN or inf, output shape and type
as the signature says.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelship.components.metrics import Predictions
from modelship.components.mlmodel import Signature
from modelship.core.lifeline import tied
from modelship.core.verdict import Check


@dataclass
class ProbeResult:
    ok: bool
    report: dict[str, Any]
    predictions: Predictions | None = None
    checks: list[Check] = field(default_factory=list)


class Probe:
    """Load and predict in a fresh interpreter, started now and awaited later.

    Several probes (candidate, champion) run while the data contract is checked; a probe that
    hangs is killed at its deadline.
    """

    def __init__(
        self,
        model_dir: Path,
        features: pd.DataFrame,
        workdir: Path,
        timeout_s: float,
        env: dict[str, str],
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        data = workdir / "features.parquet"
        features.to_parquet(data)
        self.workdir = workdir
        self.timeout_s = timeout_s
        self.output = workdir / "probe.log"
        cmd = [
            sys.executable,
            "-m",
            "modelship.components.validate.probe",
            str(model_dir),
            str(data),
            str(workdir),
        ]
        self.started = time.perf_counter()
        with self.output.open("w") as out:  # a file, not a pipe: a chatty model cannot block
            self.proc = subprocess.Popen(tied(cmd), stdout=out, stderr=subprocess.STDOUT, env=env)

    def result(self) -> ProbeResult:
        remaining = self.timeout_s - (time.perf_counter() - self.started)
        try:
            self.proc.wait(timeout=max(remaining, 0.0))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return ProbeResult(
                False, {"phase": "timeout", "error": f"no answer within {self.timeout_s:.0f} s"}
            )
        report_path = self.workdir / "probe.json"
        if not report_path.is_file():
            tail = self.output.read_text(errors="replace").strip().splitlines()[-5:]
            return ProbeResult(
                False,
                {
                    "phase": "crash",
                    "error": f"exit code {self.proc.returncode}: " + " | ".join(tail),
                },
            )
        report = json.loads(report_path.read_text())
        report["wall_s"] = round(time.perf_counter() - self.started, 3)
        if report.get("phase") != "done":
            return ProbeResult(False, report)
        with np.load(self.workdir / "predictions.npz", allow_pickle=False) as arrays:
            scores = arrays.get("scores")
            pred = Predictions(arrays["values"], scores, tuple(arrays["classes"].tolist()))
        return ProbeResult(True, report, pred)

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_OUTPUT_KINDS = {
    "double": "f",
    "float": "f",
    "float64": "f",
    "float32": "f",
    "long": "iu",
    "integer": "iu",
    "int64": "iu",
    "int32": "iu",
    "boolean": "b",
    "bool": "b",
    "string": "OUS",
    "str": "OUS",
}


def behaviour_checks(result: ProbeResult, rows: int, signature: Signature) -> list[Check]:
    """Checks on what the probe saw: load, predict, finite outputs, shape, type."""
    r = result.report
    if not result.ok:
        phase = r.get("phase")
        what = {
            "load": "failed to load",
            "predict": "failed to predict",
            "timeout": "did not answer",
            "crash": "crashed the loading process",
        }.get(str(phase), "failed")
        return [
            Check(
                name="model.loads",
                kind="model",
                passed=False,
                measured=str(phase),
                reason=f"the model {what}: {r.get('error', 'unknown error')}",
            )
        ]
    checks = [
        Check(
            name="model.loads",
            kind="model",
            passed=True,
            measured=r.get("load_s"),
            reason=f"loaded in a clean process in {r.get('load_s')} s",
        ),
        Check(
            name="model.predicts",
            kind="model",
            passed=r["shape"][0] == rows,
            measured=r["shape"][0],
            threshold=rows,
            reason=f"{r['shape'][0]} predictions for {rows} rows",
        ),
    ]
    bad = r["n_nan"] + r["n_inf"]
    checks.append(
        Check(
            name="model.finite_outputs",
            kind="model",
            passed=bad == 0,
            measured=bad,
            threshold=0,
            reason="no NaN or inf in the outputs"
            if bad == 0
            else f"{r['n_nan']} NaN and {r['n_inf']} inf values among the predictions",
        )
    )
    expected = signature.output_type
    if expected is None:
        checks.append(
            Check(
                name="model.output_type",
                kind="model",
                passed=True,
                skipped=True,
                measured=r["dtype"],
                reason="the signature declares no output type",
            )
        )
    else:
        kinds = _OUTPUT_KINDS.get(expected, "")
        got = np.dtype(r["dtype"]).kind
        ok = not kinds or got in kinds
        checks.append(
            Check(
                name="model.output_type",
                kind="model",
                passed=ok,
                measured=r["dtype"],
                threshold=expected,
                reason=f"outputs {r['dtype']} as the signature's {expected}"
                if ok
                else f"outputs {r['dtype']} but the signature declares {expected}",
            )
        )
    return checks
