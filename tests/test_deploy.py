"""`modelship deploy` end to end: a real SQLite MLflow store, kfp.local, the CLI as a process.

One registry per module; versions are added as scenarios need them. Every bad input must give a
clear message and exit 2 or 3, and leave the champion and the other versions' tags as they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelship.core.settings import Settings
from modelship.core.tags import TAG_DIGEST, TAG_STATE
from modelship.demo import train_model
from modelship.registry.client import Registry
from tests.support import (
    MODELSHIP,
    aliases,
    artifact_dir,
    cli,
    deploy_json,
    register,
    register_forest,
    version_tags,
)

pytestmark = pytest.mark.slow
MODEL = "breast-cancer"  # picks up policies/breast-cancer.yaml, as a user's model would
TREE = ["sklearn.tree._tree.Tree"]
NO_LOADTEST = str(Path(__file__).parent / "policies" / "no-loadtest.yaml")


@pytest.fixture(scope="module")
def versions(settings: Settings, data: Any) -> dict[str, str]:
    """v1 random forest (good), v2 LightGBM (better), v3 noisy logistic regression (worse)."""
    x, y, ref, val = data
    out = {
        "forest": register(
            settings, MODEL, train_model("forest", x, y), x, ref, val, skops_trusted_types=TREE
        ),
        "lightgbm": register(
            settings, MODEL, train_model("lightgbm", x, y), x, ref, val, flavor="lightgbm"
        ),
        "noisy": register(settings, MODEL, train_model("noisy-logreg", x, y), x, ref, val),
    }
    return out


@pytest.fixture()
def untouched(versions: dict[str, str]) -> Iterator[set[str]]:
    """The scenario must leave the champion and the other versions' tags as they were.

    A test adds to the yielded set the version it deploys: that one's tags may change.
    """
    before_aliases, before_tags = aliases(MODEL), version_tags(MODEL)
    deployed: set[str] = set()
    yield deployed
    assert aliases(MODEL) == before_aliases
    after = version_tags(MODEL)
    for version, tags in before_tags.items():
        if version not in deployed:
            assert after[version] == tags, f"tags of v{version} changed"


def _check(summary: dict[str, Any], name: str) -> dict[str, Any]:
    checks: dict[str, dict[str, Any]] = {
        c["name"]: c for stage in summary["stages"] for c in stage["checks"]
    }
    assert name in checks, f"no check {name}; have {sorted(checks)[:20]}"
    return checks[name]


def test_first_version_passes_with_absolute_thresholds_only(
    home: Path, versions: dict[str, str]
) -> None:
    code, summary, err = deploy_json(home, MODEL, "--version", versions["forest"])
    assert code == 0, err
    assert summary is not None
    assert {"model", "version", "digest", "outcome", "run_id", "stages"} <= summary.keys()
    assert summary["outcome"] == "passed" and summary["digest"].startswith("sha256:")
    stage = summary["stages"][0]
    assert stage["name"] == "validate" and stage["passed"]
    assert {"name", "passed", "checks", "reason"} <= stage.keys()
    assert _check(summary, "metric.accuracy")["passed"]
    assert _check(summary, "metric.accuracy.vs_champion")["skipped"]  # no champion yet
    assert _check(summary, "model.loads")["passed"]
    assert _check(summary, "data.mean radius.range")["passed"]
    tags = version_tags(MODEL)[versions["forest"]]
    # no champion yet: promoted without a canary, and the rollout stage says so
    assert tags[TAG_STATE] == "promoted" and tags[TAG_DIGEST] == summary["digest"]
    assert "no champion yet" in _check(summary, "rollout")["reason"]
    assert aliases(MODEL)["champion"] == versions["forest"]

    import mlflow

    run = mlflow.MlflowClient().get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["digest"] == summary["digest"]
    assert run.data.metrics["validate.accuracy"] == pytest.approx(
        _check(summary, "metric.accuracy")["measured"]
    )
    artifacts = {
        a.path for a in mlflow.MlflowClient().list_artifacts(summary["run_id"], "validate")
    }
    assert {"validate/data_contract.json", "validate/data_contract.html"} <= artifacts


def test_better_version_passes_against_the_champion(home: Path, versions: dict[str, str]) -> None:
    code, summary, err = deploy_json(home, MODEL, "--version", versions["lightgbm"])
    assert code == 0, err
    assert summary is not None
    vs = _check(summary, "metric.accuracy.vs_champion")
    assert vs["passed"] and not vs["skipped"] and vs["measured"] > 0  # better than the champion
    assert (
        summary["stages"][0]["figures"]["champion.accuracy"]
        < summary["stages"][0]["figures"]["accuracy"]
    )
    # promoted by the canary (policies/breast-cancer.yaml: 25%, then 100%), each step analysed
    rollout = summary["stages"][4]
    assert rollout["name"] == "rollout" and rollout["passed"]
    steps = [c for c in rollout["checks"] if c["name"].endswith(".analysis")]
    assert [c["measured"] for c in steps] == ["successful", "successful"]
    # the first step compared both versions' answers to the same (mirrored) requests
    assert "paired answers agree within the policy" in steps[0]["reason"]
    assert aliases(MODEL) == {"champion": versions["lightgbm"], "previous": versions["forest"]}
    import mlflow

    files = {a.path for a in mlflow.MlflowClient().list_artifacts(summary["run_id"], "rollout")}
    assert {"rollout/rollout.json", "rollout/rollout.png"} <= files


def _stop_tree(proc: subprocess.Popen[str]) -> None:
    """A deploy left running by a failed assertion takes its servers with it."""
    import psutil

    if proc.poll() is not None:
        return
    tree = psutil.Process(proc.pid).children(recursive=True)
    for p in [*tree, psutil.Process(proc.pid)]:
        with contextlib.suppress(psutil.Error):
            p.kill()
    proc.wait(30)


def test_a_rollout_aborted_by_hand_leaves_the_champion(
    home: Path, versions: dict[str, str], tmp_path: Path
) -> None:
    import time

    from modelship.components.rollout.state import Phase, StatusStore

    champion = aliases(MODEL)["champion"]
    policy = tmp_path / "paused.yaml"
    policy.write_text(
        "validate: {metrics: [{name: accuracy, threshold: 0.9}]}\n"
        "loadtest: {enabled: false}\n"
        "rollout: {steps: [{weight: 10, pause_s: null}], load_rate: 50}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MODELSHIP_HOME"] = str(home)
    deploy = subprocess.Popen(
        [MODELSHIP, "deploy", MODEL, "--version", versions["forest"], "--policy", str(policy),
         "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        store = StatusStore(home / "rollouts", MODEL)
        deadline = time.monotonic() + 240
        while not (
            (s := store.load()) and s.challenger == versions["forest"] and s.phase is Phase.PAUSED
        ):
            assert deploy.poll() is None and time.monotonic() < deadline, deploy.communicate()
            time.sleep(0.5)
        assert Registry().resolve(MODEL, alias="challenger").version == versions["forest"]
        aborted = cli(home, "rollout", "abort", MODEL)
        assert aborted.returncode == 0 and "aborted by hand" in aborted.stdout, aborted.stderr
        out, err = deploy.communicate(timeout=120)
        assert deploy.returncode == 3, err
    finally:
        _stop_tree(deploy)
    summary = json.loads(out)
    assert summary["rejected_at"] == "rollout" and "aborted by hand" in summary["reason"]
    assert aliases(MODEL)["champion"] == champion and "challenger" not in aliases(MODEL)
    tags = version_tags(MODEL)[versions["forest"]]
    assert tags[TAG_STATE] == "rolled_back" and "aborted by hand" in tags["modelship.reason"]


def test_degraded_version_is_rejected_and_the_champion_stays(
    home: Path, versions: dict[str, str], untouched: set[str]
) -> None:
    untouched.add(versions["noisy"])
    champion = aliases(MODEL)["champion"]
    code, summary, _ = deploy_json(home, MODEL, "--version", versions["noisy"])
    assert code == 3
    assert summary is not None and summary["outcome"] == "rejected"
    assert summary["rejected_at"] == "validate"
    assert "accuracy.vs_champion" in summary["reason"]
    assert aliases(MODEL)["champion"] == champion
    # the rejection is recorded on the version itself (the fixture ignores the deployed version)
    assert Registry().resolve(MODEL, version=versions["noisy"]).tags[TAG_STATE] == "rejected"


def test_human_view_shows_stages_and_reasons(home: Path, versions: dict[str, str]) -> None:
    proc = cli(home, "deploy", MODEL, "--version", versions["noisy"])
    assert proc.returncode == 3
    assert "validate" in proc.stderr and "rejected at validate" in proc.stderr
    assert "worse by" in proc.stderr


def test_deploy_by_alias(home: Path, versions: dict[str, str]) -> None:
    code, summary, err = deploy_json(home, MODEL, "--alias", "champion", "--policy", NO_LOADTEST)
    assert code == 0, err
    assert summary is not None and summary["version"] == aliases(MODEL)["champion"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("no-such-model",), "has no registered versions"),
        ((MODEL, "--version", "99"), "registered versions of"),
        ((MODEL, "--alias", "nope"), "has no alias 'nope'"),
        ((MODEL, "--version", "one"), "'one' is not a model version: versions are 1, 2, 3"),
    ],
)
def test_unknown_model_or_version_is_an_input_error(
    home: Path, versions: dict[str, str], untouched: set[str], args: tuple[str, ...], expected: str
) -> None:
    code, summary, err = deploy_json(home, *args)
    assert code == 2, err
    assert summary is None
    assert expected in err


def test_artifact_changed_after_registration_is_refused(
    home: Path, settings: Settings, data: Any, untouched: set[str]
) -> None:
    version = register_forest(settings, MODEL, data)
    model_file = artifact_dir(MODEL, version) / "model.skops"
    model_file.write_bytes(model_file.read_bytes() + b"tampered")
    code, _, err = deploy_json(home, MODEL, "--version", version)
    assert code == 2
    assert "artifacts changed" in err and "new version" in err
    assert Registry().resolve(MODEL, version=version).tags[TAG_STATE] == "rejected"


def test_model_that_fails_to_load_is_rejected(
    home: Path, settings: Settings, data: Any, untouched: set[str]
) -> None:
    version = register_forest(settings, MODEL, data, record_digest=False)
    (artifact_dir(MODEL, version) / "model.skops").write_bytes(b"not a model")
    Registry().record_digest(Registry().resolve(MODEL, version=version))  # broken from the start
    code, summary, err = deploy_json(home, MODEL, "--version", version)
    assert code == 3, err
    assert summary is not None
    loads = _check(summary, "model.loads")
    assert not loads["passed"] and "failed to load" in loads["reason"]


def test_model_predicting_nan_is_rejected(
    home: Path, settings: Settings, data: Any, untouched: set[str]
) -> None:
    from sklearn.linear_model import LinearRegression

    x, y, ref, val = data
    model = LinearRegression().fit(x, y)
    model.coef_ = np.full_like(model.coef_, np.nan)
    version = register(settings, MODEL, model, x, ref, val)
    code, summary, err = deploy_json(home, MODEL, "--version", version)
    assert code == 3, err
    assert summary is not None
    finite = _check(summary, "model.finite_outputs")
    assert not finite["passed"] and finite["measured"] == len(val)


def test_pickled_model_is_refused_before_loading(
    home: Path, settings: Settings, data: Any, untouched: set[str]
) -> None:
    x, y, ref, val = data
    version = register(
        settings,
        MODEL,
        train_model("noisy-logreg", x, y),
        x,
        ref,
        val,
        serialization_format="cloudpickle",
    )
    code, summary, err = deploy_json(home, MODEL, "--version", version)
    assert code == 3, err
    assert summary is not None
    check = _check(summary, "model.serialization")
    assert not check["passed"] and "allow_pickle" in check["reason"]
    assert "model.loads" not in {c["name"] for s in summary["stages"] for c in s["checks"]}


def _policy_with_validation(tmp_path: Path, frame: pd.DataFrame) -> Path:
    csv = tmp_path / "validation.csv"
    frame.to_csv(csv, index=False)
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"validate:\n  validation_data:\n    uri: {csv}\n    target: target\n")
    return policy


def test_validation_data_missing_a_column_is_rejected(
    home: Path, versions: dict[str, str], data: Any, tmp_path: Path, untouched: set[str]
) -> None:
    untouched.add(versions["forest"])
    val = data[3].drop(columns=["mean radius"])
    policy = _policy_with_validation(tmp_path, val)
    code, summary, err = deploy_json(
        home, MODEL, "--version", versions["forest"], "--policy", str(policy)
    )
    assert code == 3, err
    assert summary is not None
    check = _check(summary, "data.mean radius.exists")
    assert not check["passed"] and "missing" in check["reason"]


def test_validation_data_with_a_wrong_type_is_rejected(
    home: Path, versions: dict[str, str], data: Any, tmp_path: Path, untouched: set[str]
) -> None:
    untouched.add(versions["forest"])
    val = data[3].copy()
    val["mean texture"] = val["mean texture"].astype(str) + "mm"
    policy = _policy_with_validation(tmp_path, val)
    code, summary, err = deploy_json(
        home, MODEL, "--version", versions["forest"], "--policy", str(policy)
    )
    assert code == 3, err
    assert summary is not None
    check = _check(summary, "data.mean texture.type")
    assert not check["passed"] and "double" in check["reason"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("validate:\n  contrat: {}\n", "validate.contrat: unknown key"),
        (
            "validate:\n  metrics:\n    - {name: accuracy, threshold: high}\n",
            "validate.metrics.0.threshold",
        ),
        (
            "validate:\n  metrics:\n    - {name: accuracy, max_relative_regression: 3}\n",
            "less than or equal to 1",
        ),
    ],
)
def test_invalid_policy_fails_before_anything_runs(
    home: Path,
    versions: dict[str, str],
    tmp_path: Path,
    untouched: set[str],
    text: str,
    expected: str,
) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text(text)
    runs_before = _deployment_runs()
    code, summary, err = deploy_json(
        home, MODEL, "--version", versions["forest"], "--policy", str(policy)
    )
    assert code == 2
    assert summary is None
    assert expected in err and f"{policy}:" in err
    assert _deployment_runs() == runs_before  # nothing started


def _deployment_runs() -> int:
    import mlflow

    exp = mlflow.MlflowClient().get_experiment_by_name("modelship-deployments")
    return 0 if exp is None else len(mlflow.MlflowClient().search_runs([exp.experiment_id]))


def test_status_json_lists_states_and_aliases(home: Path, versions: dict[str, str]) -> None:
    proc = cli(home, "status", MODEL, "--json")
    assert proc.returncode == 0, proc.stderr
    import json

    report = json.loads(proc.stdout)
    by_version = {v["version"]: v for v in report["versions"]}
    assert by_version[versions["lightgbm"]]["aliases"] == ["champion"]
    assert by_version[versions["forest"]]["aliases"] == ["previous"]
    assert by_version[versions["noisy"]]["state"] == "rejected"
    assert cli(home, "status", "no-such-model").returncode == 2
