"""A pipeline step in a pod checks the settings its Secret gave it before it touches anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelship.core.errors import InputError
from modelship.core.settings import SETTINGS_SECRET_ENV, Settings

POD = {SETTINGS_SECRET_ENV: "team-a", "MLFLOW_TRACKING_URI": "http://mlflow.mlops.svc:5000"}


def test_a_pod_with_its_settings_reads_the_tracking_server(tmp_path: Path) -> None:
    settings = Settings.from_env({**POD, "MODELSHIP_HOME": str(tmp_path)})
    assert settings.tracking_uri == POD["MLFLOW_TRACKING_URI"]
    assert settings.pod_secret == "team-a" and not settings.embedded


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({SETTINGS_SECRET_ENV: "team-a"}, "this pipeline step has no MLFLOW_TRACKING_URI"),
        (
            {**POD, "AWS_ACCESS_KEY_ID": "AKIA"},
            "has AWS_ACCESS_KEY_ID but no AWS_SECRET_ACCESS_KEY",
        ),
        ({**POD, "MLFLOW_TRACKING_PASSWORD": "pw"}, "but no MLFLOW_TRACKING_USERNAME"),
        ({**POD, "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}, "a store on the pod's own disk"),
    ],
)
def test_a_pod_missing_a_key_fails_naming_it_and_the_secret(env: dict[str, str], says: str) -> None:
    with pytest.raises(InputError) as raised:
        Settings.from_env(env)
    assert says in raised.value.message
    assert "team-a" in str(raised.value)


def test_outside_a_pod_nothing_is_required(tmp_path: Path) -> None:
    settings = Settings.from_env({"MODELSHIP_HOME": str(tmp_path)})
    assert settings.embedded and settings.pod_secret is None


def test_a_step_started_as_kfp_starts_it_fails_at_once_with_the_key(tmp_path: Path) -> None:
    # the resolve step's entry point, in its own process as in a pod, with a Secret that
    # lacks the tracking URI: one MODELSHIP_ERROR line naming the key, nothing else done
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({SETTINGS_SECRET_ENV: "team-a", "MODELSHIP_HOME": str(tmp_path / "home")})
    code = (
        "from modelship.pipelines.steps import resolve_step\n"
        f"resolve_step('m', '1', '', '', 'run-1', {str(tmp_path / 'model')!r})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("MODELSHIP_ERROR ")]
    error = json.loads(line.removeprefix("MODELSHIP_ERROR "))
    assert error["stage"] == "resolve" and error["exit_code"] == 2
    assert "MLFLOW_TRACKING_URI" in error["message"] and "team-a" in error["hint"]
    assert not (tmp_path / "home").exists() and not (tmp_path / "model").exists()
