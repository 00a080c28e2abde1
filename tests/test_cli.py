"""The CLI's own surface: help, policy check, usage errors."""

from __future__ import annotations

from pathlib import Path

from modelship.policies.loader import DEFAULT_POLICY
from tests.support import cli


def test_help_lists_the_commands(tmp_path: Path) -> None:
    proc = cli(tmp_path, "--help")
    assert proc.returncode == 0
    for command in ("deploy", "status", "policy", "compile", "demo"):
        assert command in proc.stdout


def test_policy_check_accepts_the_default(tmp_path: Path) -> None:
    proc = cli(tmp_path, "policy", "check", str(DEFAULT_POLICY))
    assert proc.returncode == 0, proc.stderr
    assert "ok (policy hash" in proc.stdout


def test_policy_check_prints_each_error_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "validate:\n"
        "  contrat: {}\n"
        "loadtest:\n"
        "  rate: -5\n"
        "rollout:\n"
        "  steps:\n"
        "    - {weight: 50}\n"
        "    - {weight: 150}\n"
    )
    proc = cli(tmp_path, "policy", "check", str(bad))
    assert proc.returncode == 2
    assert f"{bad}:2:3 validate.contrat: unknown key" in proc.stderr
    assert f"{bad}:4:3 loadtest.rate: Input should be greater than 0" in proc.stderr
    assert f"{bad}:8:8 rollout.steps.1.weight" in proc.stderr


def test_policy_check_reports_yaml_syntax_errors(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("validate:\n  metrics: [\n")
    proc = cli(tmp_path, "policy", "check", str(bad))
    assert proc.returncode == 2
    assert "not valid YAML" in proc.stderr


def test_version_and_alias_together_is_a_usage_error(tmp_path: Path) -> None:
    proc = cli(tmp_path, "deploy", "m", "--version", "1", "--alias", "champion")
    assert proc.returncode == 2
    assert "not both" in proc.stderr
