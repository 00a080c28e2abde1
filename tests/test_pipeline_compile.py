"""The committed KFP YAML is what the code compiles to, and it is usable from the KFP UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from modelship.pipelines.compile import PIPELINE_DIR, compile_all
from tests.support import cli


def test_committed_yaml_matches_a_fresh_compile(tmp_path: Path) -> None:
    for fresh in compile_all(tmp_path):
        committed = PIPELINE_DIR / fresh.name
        assert committed.exists(), f"{committed.name} is not committed: run `modelship compile`"
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.name} is stale: run `modelship compile` and commit the result"
        )


def test_ui_form_has_typed_described_parameters() -> None:
    spec = yaml.safe_load((PIPELINE_DIR / "deploy.yaml").read_text())
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"model_name", "version", "alias", "policy_file"}
    for name, param in params.items():
        assert param["parameterType"] == "STRING"
        assert param.get("description"), f"{name} has no description for the run form"
    assert "isOptional" not in params["model_name"]  # the one required field
    assert spec["pipelineInfo"]["description"]


def test_compile_command_writes_yaml(tmp_path: Path) -> None:
    proc = cli(tmp_path, "compile", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "deploy.yaml").exists()


def _tasks(ir: dict[str, Any]) -> dict[str, Any]:
    return dict(ir["root"]["dag"]["tasks"])


def test_no_task_of_either_pipeline_is_ever_served_from_the_cache() -> None:
    # every step writes to MLflow (verdicts, tags, aliases, the monitor's cursor): a cached
    # task would skip that, and a recurring monitor run would judge nothing after the first
    for name in ("deploy", "monitor"):
        tasks = _tasks(yaml.safe_load((PIPELINE_DIR / f"{name}.yaml").read_text()))
        assert tasks, name
        for task, spec in tasks.items():
            assert spec["cachingOptions"] == {}, f"{name}/{task} may be cached: {spec}"
            assert "enableCache" not in spec["cachingOptions"]


def test_compile_with_an_image_points_every_task_at_it(tmp_path: Path) -> None:
    image = "registry.example:5000/modelship@sha256:" + "ab" * 32
    proc = cli(tmp_path, "compile", "--out", str(tmp_path / "out"), "--image", image)
    assert proc.returncode == 0, proc.stderr
    for name in ("deploy", "monitor"):
        ir = yaml.safe_load((tmp_path / "out" / f"{name}.yaml").read_text())
        images = {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()}
        assert images == {image}
        committed = yaml.safe_load((PIPELINE_DIR / f"{name}.yaml").read_text())
        for executor in committed["deploymentSpec"]["executors"].values():
            executor["container"]["image"] = image
        assert ir == committed  # nothing else changed
