"""`modelship submit` against a stand-in for the KFP REST API (v2beta1).

A real Kubeflow Pipelines needs Kubernetes, which these machines do not have; the stand-in
implements the four endpoints kfp.Client calls and records what it was sent, so the test checks
the real client's requests: the compiled pipeline spec and the run's parameters.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.support import cli, http_stub


class _KfpApi(BaseHTTPRequestHandler):
    runs: ClassVar[list[dict[str, Any]]] = []

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
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        elif self.path.startswith("/apis/v2beta1/runs"):
            type(self).runs.append(body)
            self._reply(
                {
                    "run_id": "run-42",
                    "display_name": body.get("display_name"),
                    "experiment_id": "exp-1",
                }
            )
        else:
            self.send_error(404)


@pytest.fixture()
def kfp_api() -> Iterator[str]:
    _KfpApi.runs = []
    with http_stub(_KfpApi) as url:
        yield url


def test_submit_starts_the_compiled_pipeline_with_the_parameters(
    kfp_api: str, tmp_path: Path
) -> None:
    proc = cli(tmp_path, "submit", "breast-cancer", "--version", "3", "--host", kfp_api, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["run_id"] == "run-42" and out["url"].endswith("/#/runs/details/run-42")
    (run,) = _KfpApi.runs
    assert run["experiment_id"] == "exp-1"
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == "modelship-deploy"
    assert run["runtime_config"]["parameters"] == {
        "model_name": "breast-cancer", "version": "3", "alias": "", "policy_file": "",
    }  # fmt: skip


def test_submit_to_an_unreachable_host_says_so(tmp_path: Path) -> None:
    proc = cli(tmp_path, "submit", "m", "--host", "http://127.0.0.1:9", timeout=120)
    assert proc.returncode == 1
    assert "could not start the deploy pipeline on http://127.0.0.1:9" in proc.stderr
