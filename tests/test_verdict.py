"""Verdicts: the typed result of a gate that the next stage demands."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelship.core.errors import GateRejected
from modelship.core.verdict import Check, ModelState, Verdict

PASSED = Check(name="data.a.exists", kind="data", passed=True, reason="ok")
FAILED_RANGE = Check(
    name="data.a.range",
    kind="data",
    passed=False,
    measured=0.25,
    threshold="<= 0.01",
    reason="25.0% of 'a' lies outside the range",
)
FAILED_METRIC = Check(
    name="metric.f1", kind="metric", passed=False, measured=0.6, reason="f1 misses the bar"
)
SKIPPED = Check(
    name="metric.f1.vs_champion", kind="metric", passed=True, skipped=True, reason="no champion"
)


def test_passing_verdict_counts_its_checks() -> None:
    verdict = Verdict.from_checks("validate", [PASSED, SKIPPED])
    assert verdict.passed
    assert verdict.reason == "all 2 checks passed"
    assert verdict.require_passed() is verdict


def test_failed_verdict_reason_lists_every_failed_check() -> None:
    verdict = Verdict.from_checks("validate", [PASSED, FAILED_RANGE, SKIPPED, FAILED_METRIC])
    assert not verdict.passed
    assert verdict.reason == (
        "data.a.range: 25.0% of 'a' lies outside the range; metric.f1: f1 misses the bar"
    )
    assert "data.a.exists" not in verdict.reason
    assert verdict.checks == [PASSED, FAILED_RANGE, SKIPPED, FAILED_METRIC]


def test_require_passed_raises_gate_rejected() -> None:
    verdict = Verdict.from_checks("validate", [FAILED_METRIC])
    with pytest.raises(GateRejected) as info:
        verdict.require_passed()
    assert "'validate'" in info.value.message
    assert "metric.f1: f1 misses the bar" in info.value.message
    assert info.value.exit_code == 3


def test_from_checks_rounds_duration_and_keeps_figures() -> None:
    verdict = Verdict.from_checks("validate", [PASSED], figures={"f1": 0.9}, duration_s=1.23456789)
    assert verdict.duration_s == 1.235
    assert verdict.figures == {"f1": 0.9}
    assert Verdict.from_checks("validate", [PASSED]).figures == {}


def test_save_load_round_trip(tmp_path: Path) -> None:
    verdict = Verdict.from_checks(
        "validate",
        [PASSED, FAILED_RANGE, SKIPPED, FAILED_METRIC],
        figures={"f1": 0.6, "rows": 200.0},
        duration_s=2.5,
    )
    path = tmp_path / "verdict.json"
    verdict.save(path)
    loaded = Verdict.load(path)
    assert loaded == verdict
    assert loaded.checks[2].skipped
    assert loaded.summary()["checks"][1]["measured"] == 0.25


def test_load_refuses_unknown_fields(tmp_path: Path) -> None:
    path = tmp_path / "verdict.json"
    path.write_text('{"stage": "validate", "passed": true, "reason": "", "blessed": true}')
    with pytest.raises(ValueError, match="blessed"):
        Verdict.load(path)


def test_terminal_model_states() -> None:
    assert {s for s in ModelState if s.is_terminal} == {
        ModelState.REJECTED,
        ModelState.ROLLED_BACK,
    }
