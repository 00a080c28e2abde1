"""A pipeline step after a gate that did not pass: it says so, and does nothing else.

Each step is its own process (a pod on a cluster), so the one that only has to record
``not run`` must not first load MLflow and its stage's libraries. Run here as KFP runs a step:
a fresh interpreter calling the step's entry point.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelship.core.events import EVENTS_ENV
from modelship.core.verdict import Verdict

#: each later step, the verdict it follows, and its arguments after the model's identity
#: (``{before}``, ``{verdict}`` and ``{out}`` are filled in below)
STEPS = {
    "optimize": ("validate", "'m/model', 'm', '1', 'sha256:x', 'run', '{{}}', {before}, {verdict}, {out}"),
    "package": ("optimize", "'m/model', 'm', '1', 'sha256:x', 'run', '{{}}', {before}, {out}, {verdict}, {out}"),
    "loadtest": ("package", "'m', '1', 'run', '{{}}', {before}, {out}, {verdict}"),
    "rollout": ("loadtest", "'m', '1', 'run', '{{}}', {before}, {out}, {verdict}"),
}  # fmt: skip
HEAVY = ("mlflow", "onnx", "onnxruntime", "pandas", "bentoml", "great_expectations")


@pytest.mark.parametrize("stage", list(STEPS))
def test_a_step_after_a_gate_that_did_not_pass_records_not_run_and_loads_nothing_heavy(
    tmp_path: Path, stage: str
) -> None:
    before, args = STEPS[stage]
    failed = tmp_path / "before.json"
    Verdict(stage=before, passed=False, reason=f"{before}: it failed").save(failed)
    verdict, out, events = tmp_path / "verdict.json", tmp_path / "out", tmp_path / "events.jsonl"
    filled = args.format(before=repr(str(failed)), verdict=repr(str(verdict)), out=repr(str(out)))
    code = (
        "import sys\n"
        "from modelship.pipelines import steps\n"
        f"passed = steps.{stage}_step({filled})\n"
        f"print(passed, sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {EVENTS_ENV: str(events), "MODELSHIP_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "False []", done.stdout
    saved = Verdict.load(verdict)
    assert saved.stage == stage and saved.skipped and not saved.passed
    # the name the step gives before importing its stage is the stage's own
    assert importlib.import_module(f"modelship.components.{stage}.stage").STAGE.name == stage
    assert saved.reason == f"not run: {before} did not pass"
    said = [json.loads(line) for line in events.read_text().splitlines()]
    assert [(e["stage"], e["status"]) for e in said] == [(stage, "start"), (stage, "end")]
    assert said[-1]["passed"] is False and said[-1]["skipped"] is True
    assert not out.exists() and not (tmp_path / "home").exists()  # nothing else written
