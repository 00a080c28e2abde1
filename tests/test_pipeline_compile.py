"""The committed KFP YAML is what the code compiles to, and it is usable from the KFP UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelship.components.package.image import PIPELINE_IMAGE_ENV
from modelship.core.settings import SECRET_OPTIONAL, SECRET_REQUIRED, SETTINGS_SECRET_ENV
from modelship.pipelines.compile import PIPELINE_DIR, compile_all, read_ir
from modelship.pipelines.deploy import IMAGE
from tests.support import cli


def test_committed_yaml_matches_a_fresh_compile(tmp_path: Path) -> None:
    for fresh in compile_all(tmp_path):
        committed = PIPELINE_DIR / fresh.name
        assert committed.exists(), f"{committed.name} is not committed: run `modelship compile`"
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.name} is stale: run `modelship compile` and commit the result"
        )


def test_ui_form_has_typed_described_parameters() -> None:
    spec, _ = read_ir(PIPELINE_DIR / "deploy.yaml")
    params = spec["root"]["inputDefinitions"]["parameters"]
    # the policy is a parameter's text, never a path on the submitting machine
    assert set(params) == {"model_name", "version", "alias", "policy_yaml"}
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
        tasks = _tasks(read_ir(PIPELINE_DIR / f"{name}.yaml")[0])
        assert tasks, name
        for task, spec in tasks.items():
            assert spec["cachingOptions"] == {}, f"{name}/{task} may be cached: {spec}"
            assert "enableCache" not in spec["cachingOptions"]


def test_compile_with_an_image_points_every_task_at_it(tmp_path: Path) -> None:
    image = "registry.example:5000/modelship@sha256:" + "ab" * 32
    proc = cli(tmp_path, "compile", "--out", str(tmp_path / "out"), "--image", image)
    assert proc.returncode == 0, proc.stderr
    for name in ("deploy", "monitor"):
        ir, platform = read_ir(tmp_path / "out" / f"{name}.yaml")
        images = {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()}
        assert images == {image}
        committed, committed_platform = read_ir(PIPELINE_DIR / f"{name}.yaml")
        for executor in committed["deploymentSpec"]["executors"].values():
            executor["container"]["image"] = image
            for var in executor["container"].get("env", []):
                if var["name"] == PIPELINE_IMAGE_ENV:  # the base of a Bento image built in a pod
                    var["value"] = image
        assert ir == committed  # nothing else changed
        assert platform == committed_platform
    ir, _ = read_ir(tmp_path / "out" / "deploy.yaml")
    package_env = ir["deploymentSpec"]["executors"]["exec-package-model"]["container"]["env"]
    assert {"name": PIPELINE_IMAGE_ENV, "value": image} in package_env


def _secret_env(platform: dict[str, Any], executor: str) -> dict[str, tuple[str, bool]]:
    """Environment variable -> (Secret name, optional) for one executor of the platform spec."""
    spec = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][executor]
    return {
        pair["envVar"]: (entry["secretName"], entry["optional"])
        for entry in spec["secretAsEnv"]
        for pair in entry["keyToEnv"]
    }


def test_every_task_reads_its_settings_from_the_secret_named_at_compile(tmp_path: Path) -> None:
    proc = cli(tmp_path, "compile", "--out", str(tmp_path / "out"), "--secret", "team-a-mlflow")
    assert proc.returncode == 0, proc.stderr
    for name in ("deploy", "monitor"):
        ir, platform = read_ir(tmp_path / "out" / f"{name}.yaml")
        assert platform is not None, f"{name}.yaml has no Kubernetes platform spec"
        executors = ir["deploymentSpec"]["executors"]
        assert len(executors) == (7 if name == "deploy" else 1)
        for executor, spec in executors.items():
            env = _secret_env(platform, executor)
            assert env["MLFLOW_TRACKING_URI"] == ("team-a-mlflow", False), executor
            assert set(env) == {*SECRET_REQUIRED, *SECRET_OPTIONAL}
            assert all(env[key] == ("team-a-mlflow", True) for key in SECRET_OPTIONAL)
            plain = {e["name"]: e["value"] for e in spec["container"]["env"]}
            assert plain.pop(PIPELINE_IMAGE_ENV, IMAGE) == IMAGE  # what the task runs
            assert plain == {
                SETTINGS_SECRET_ENV: "team-a-mlflow"
            }  # nothing else from the pod's env


def test_the_shipped_pipelines_name_the_default_secret_and_no_secret_compiles_without(
    tmp_path: Path,
) -> None:
    _, platform = read_ir(PIPELINE_DIR / "deploy.yaml")
    assert platform is not None
    assert _secret_env(platform, "exec-resolve-model")["MLFLOW_TRACKING_URI"][0] == (
        "modelship-settings"
    )
    proc = cli(tmp_path, "compile", "--out", str(tmp_path / "out"), "--no-secret")
    assert proc.returncode == 0, proc.stderr
    ir, platform = read_ir(tmp_path / "out" / "deploy.yaml")
    assert platform is None
    for e in ir["deploymentSpec"]["executors"].values():
        names = {v["name"] for v in e["container"].get("env", [])}
        assert names <= {PIPELINE_IMAGE_ENV}, e  # no settings Secret named


def test_a_secret_name_kubernetes_would_refuse_is_refused_at_compile(tmp_path: Path) -> None:
    proc = cli(tmp_path, "compile", "--out", str(tmp_path / "out"), "--secret", "Team_A")
    assert proc.returncode == 2
    assert "'Team_A' is not a Kubernetes Secret name" in proc.stderr
    assert not (tmp_path / "out").exists()
