"""`modelship submit` against a stand-in for the KFP REST API (v2beta1).

A real Kubeflow Pipelines needs Kubernetes, which these machines do not have; the stand-in
implements the endpoints kfp.Client calls (healthz, experiments, runs, recurring runs) and
records what it was sent, so the tests check the real client's requests: the compiled pipeline
and platform spec, the run's parameters, caching, and how a followed run's outcome is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from tests.support import cli, http_stub

#: a policy a cluster can run: the default (local) target is refused by submit
KSERVE = """\
package:
  inference_log: {uri: "s3://models/inference"}
rollout:
  target: kserve
  mirror_share: 0
  analysis: {prediction_check: distribution}
"""


class _KfpApi(BaseHTTPRequestHandler):
    runs: ClassVar[list[dict[str, Any]]] = []
    recurring: ClassVar[list[dict[str, Any]]] = []
    #: what GET runs/run-42 answers, one state per call (the last one repeats)
    states: ClassVar[list[str]] = ["SUCCEEDED"]

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _reply(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.startswith("/apis/v2beta1/healthz"):
            self._reply({"multi_user": False})
        elif self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiments": []})
        elif self.path.startswith("/apis/v2beta1/runs/run-42"):
            states = type(self).states
            state = states.pop(0) if len(states) > 1 else states[0]
            self._reply({"run_id": "run-42", "experiment_id": "exp-1", "state": state})
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        elif self.path.startswith("/apis/v2beta1/runs"):
            type(self).runs.append(body)
            self._reply({"run_id": "run-42", "display_name": body.get("display_name"),
                         "experiment_id": "exp-1", "state": "PENDING"})  # fmt: skip
        elif self.path.startswith("/apis/v2beta1/recurringruns"):
            type(self).recurring.append(body)
            self._reply({"recurring_run_id": "rr-7", "display_name": body.get("display_name")})
        else:
            self.send_error(404)


@pytest.fixture()
def kfp_api() -> Iterator[str]:
    _KfpApi.runs, _KfpApi.recurring, _KfpApi.states = [], [], ["SUCCEEDED"]
    with http_stub(_KfpApi) as url:
        yield url


@pytest.fixture()
def kserve_policy(tmp_path: Path) -> Path:
    path = tmp_path / "kserve.yaml"
    path.write_text(KSERVE)
    return path


def test_submit_starts_the_compiled_pipeline_with_the_policy_itself_and_no_cache(
    kfp_api: str, kserve_policy: Path, tmp_path: Path
) -> None:
    proc = cli(tmp_path, "submit", "breast-cancer", "--version", "3", "--host", kfp_api,
               "--policy", str(kserve_policy), "--no-wait", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["run_id"] == "run-42" and out["url"].endswith("/#/runs/details/run-42")
    (run,) = _KfpApi.runs
    assert run["experiment_id"] == "exp-1"
    assert run["service_account"] == "modelship-pipeline"  # pipelines/rbac.yaml's
    spec = run["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "modelship-deploy"
    assert "modelship-settings" in json.dumps(spec["platform_spec"])  # the Secret travels too
    params = run["runtime_config"]["parameters"]
    assert {k: params[k] for k in ("model_name", "version", "alias")} == {
        "model_name": "breast-cancer", "version": "3", "alias": "",
    }  # fmt: skip
    # the whole effective policy, not a path: the shipped breast-cancer.yaml merged with the file
    sent = yaml.safe_load(params["policy_yaml"])
    assert sent["rollout"]["target"] == "kserve"
    assert sent["validate"]["metrics"][0]["name"] == "accuracy", (
        "the model's own policy did not travel"
    )
    # every task compiled with caching off, and the run asks for no cache either
    assert all(
        t["cachingOptions"] == {} for t in spec["pipeline_spec"]["root"]["dag"]["tasks"].values()
    )


def test_submit_refuses_a_local_target_before_anything_runs(kfp_api: str, tmp_path: Path) -> None:
    proc = cli(tmp_path, "submit", "breast-cancer", "--host", kfp_api)
    assert proc.returncode == 2, proc.stderr
    assert "rollout.target: local" in proc.stderr
    assert "set rollout.target: kserve or seldon" in proc.stderr
    assert _KfpApi.runs == []


def test_submit_refuses_a_kserve_log_the_monitor_could_not_read(
    kfp_api: str, tmp_path: Path
) -> None:
    policy = tmp_path / "pod-disk.yaml"
    policy.write_text(KSERVE.replace('{uri: "s3://models/inference"}', "{flush_rows: 100}"))
    proc = cli(tmp_path, "submit", "breast-cancer", "--host", kfp_api, "--policy", str(policy))
    assert proc.returncode == 2, proc.stderr
    assert "package.inference_log.uri is unset" in proc.stderr
    assert "s3://BUCKET/inference" in proc.stderr
    assert _KfpApi.runs == []


def _deployment_record(home: Path, kfp_run: str, outcome: str) -> None:
    """What the resolve and conclude steps leave in MLflow for a KFP run, made here by the same
    code (in this process's embedded store, which the CLI under test reads)."""
    import os

    from modelship.core.settings import Settings
    from modelship.registry.client import ModelRef
    from modelship.registry.deployments import DeploymentRun

    os.environ["MODELSHIP_HOME"] = str(home)
    settings = Settings.from_env()
    settings.prepare()
    from mlflow import MlflowClient

    run = DeploymentRun.open(
        MlflowClient(), settings, ModelRef("breast-cancer", "3", None, "models:/m-0"), digest="sha256:00",
        policy_hash="0", policy_json="{}", kfp_run=kfp_run,
    )  # fmt: skip
    reason = "all gates passed" if outcome == "passed" else "validate: accuracy 0.61 < 0.9"
    run.finish(passed=outcome == "passed", summary={"outcome": outcome, "reason": reason})


@pytest.mark.parametrize(("outcome", "code"), [("passed", 0), ("rejected", 3)])
def test_submit_waits_for_the_run_and_exits_with_the_deployments_outcome(
    kfp_api: str, kserve_policy: Path, tmp_path: Path, outcome: str, code: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _deployment_record(tmp_path, "run-42", outcome)
    _KfpApi.states = ["PENDING", "RUNNING", "SUCCEEDED"]
    proc = cli(tmp_path, "submit", "breast-cancer", "--host", kfp_api, "--policy",
               str(kserve_policy), "--json", "--poll", "0.2", timeout=240)  # fmt: skip
    assert proc.returncode == code, proc.stderr
    out = json.loads(proc.stdout)
    assert out["state"] == "SUCCEEDED" and out["outcome"] == outcome
    assert out["summary"]["reason"]
    assert "run-42: running" in proc.stderr  # progress while it waits


def test_a_failed_run_exits_1_even_without_an_mlflow_record(
    kfp_api: str, kserve_policy: Path, tmp_path: Path
) -> None:
    _KfpApi.states = ["FAILED"]
    proc = cli(tmp_path, "submit", "breast-cancer", "--host", kfp_api, "--policy",
               str(kserve_policy))  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "run failed, deployment outcome unknown" in proc.stdout


def test_submit_monitor_creates_a_recurring_run_every_interval(
    kfp_api: str, tmp_path: Path
) -> None:
    proc = cli(tmp_path, "submit", "breast-cancer", "--monitor", "--every", "15m", "--host",
               kfp_api, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["every_s"] == 900
    (recurring,) = _KfpApi.recurring
    assert recurring["trigger"]["periodic_schedule"]["interval_second"] == 900
    assert int(recurring["max_concurrency"]) == 1 and recurring["no_catchup"] is True
    spec = recurring["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "modelship-monitor"
    assert yaml.safe_load(recurring["runtime_config"]["parameters"]["policy_yaml"])["monitor"]
    assert _KfpApi.runs == []


def test_a_bad_interval_is_refused_with_the_form(kfp_api: str, tmp_path: Path) -> None:
    proc = cli(tmp_path, "submit", "m", "--monitor", "--every", "5s", "--host", kfp_api)
    assert proc.returncode == 2
    assert "write it as 15m, 1h or 900" in proc.stderr


def test_submit_to_an_unreachable_host_says_so(kserve_policy: Path, tmp_path: Path) -> None:
    proc = cli(tmp_path, "submit", "m", "--host", "http://127.0.0.1:9", "--policy",
               str(kserve_policy), timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert "could not start the deploy pipeline on http://127.0.0.1:9" in proc.stderr
