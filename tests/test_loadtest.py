"""The load-test gate: its histogram, its decisions, an honest open-loop generator, and the
faults the issue names (never ready, crash under load, too slow, port in use) against real
`bentoml serve` processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelship.components.loadtest import gate
from modelship.components.serving.loadgen import Phase
from modelship.components.serving.loadgen import run as drive
from modelship.components.serving.server import (
    NotReady,
    PortInUse,
    bento_launch,
    pick_port,
    port_free,
    served,
)
from modelship.core.histogram import LatencyHistogram
from modelship.core.ports import free_port
from modelship.core.settings import Settings
from modelship.policies.schema import LoadTest
from tests.support import (
    background,
    bento_env,
    breast_cancer,
    deploy_json,
    register_forest,
    wait_http,
)

MODEL = "breast-cancer"


# -- pure parts ----------------------------------------------------------------------------------


def test_histogram_percentiles_are_within_half_a_percent() -> None:
    rng = np.random.default_rng(0)
    samples = rng.lognormal(mean=-6, sigma=1.2, size=50_000)  # ~2.5 ms median, long tail
    h = LatencyHistogram()
    for s in samples:
        h.record(float(s))
    for q in (50, 90, 99, 99.9):
        exact = float(np.percentile(samples, q, method="inverted_cdf"))
        assert abs(h.percentile(q) - exact) / exact <= 0.0051, q
    assert h.percentile(100) == h.max_s == samples.max()


def _figures(
    p99: float, *, rate: float = 100.0, errors: int = 0, lag: float = 0.0
) -> dict[str, Any]:
    return {"latency_ms": {"p50": p99 / 2, "p90": p99, "p99": p99, "p99.9": p99, "max": p99},
            "target_rate": 100.0, "achieved_rate": rate, "sent": 1000, "error_rate": errors / 1000,
            "errors": {"http_503": errors} if errors else {}, "client_lag_ms": lag,
            "stopped": None}  # fmt: skip


def test_slo_checks_fail_each_way_and_show_the_figures() -> None:
    policy = LoadTest()
    assert all(c.passed for c in gate.slo_checks(_figures(20), policy))
    slow = {c.name: c for c in gate.slo_checks(_figures(250), policy)}
    assert (
        not slow["loadtest.p99"].passed
        and "p99 250.0 ms over the SLO of 100.0 ms" in slow["loadtest.p99"].reason
    )
    assert "at 100.0/100.0 req/s" in slow["loadtest.p99"].reason
    errors = {c.name: c for c in gate.slo_checks(_figures(20, errors=5), policy)}
    assert (
        not errors["loadtest.error_rate"].passed
        and "http_503 5" in errors["loadtest.error_rate"].reason
    )
    starved = {c.name: c for c in gate.slo_checks(_figures(20, rate=80), policy)}
    assert not starved["loadtest.rate"].passed
    lagging = {c.name: c for c in gate.slo_checks(_figures(20, lag=500), policy)}
    assert not lagging["loadtest.client"].passed and not lagging["loadtest.client"].blocking


def test_champion_comparison_is_relative_with_a_noise_floor() -> None:
    policy = LoadTest(max_p99_regression=0.2, p99_regression_floor_ms=2.0)
    assert gate.champion_check(_figures(1.5), _figures(1.0), policy).passed  # +0.5 ms: noise
    assert gate.champion_check(_figures(110), _figures(100), policy).passed  # +10%
    worse = gate.champion_check(_figures(130), _figures(100), policy)
    assert not worse.passed and "worse than the allowed 20%" in worse.reason
    none = gate.champion_check(_figures(130), None, policy, "no champion yet")
    assert none.passed and none.skipped and "no champion yet" in none.reason


def test_find_max_doubles_then_bisects() -> None:
    policy = LoadTest()
    assert gate.next_probe(None, None, policy, 200) == 200
    assert gate.next_probe(200, None, policy, 200) == 400
    assert gate.next_probe(400, 800, policy, 200) == 600
    assert gate.next_probe(None, 200, policy, 200) == 100


@pytest.mark.slow
def test_open_loop_charges_a_stall_to_every_request_queued_behind_it(tmp_path: Path) -> None:
    """A closed-loop client would see one slow request; an honest one sees the queue."""
    port = free_port()
    cmd = [sys.executable, "-m", "tests.servers.stall", str(port), "1.0", "0.5"]
    with background(cmd, tmp_path / "stall.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, tmp_path / "stall.log")
        result = drive(f"http://127.0.0.1:{port}/predict", [b"{}"], [Phase(200, 3.0)])
    assert result.sent == 600 and result.ok == 600
    slow = sum(1 for lat in result.latency if lat > 0.25)
    assert slow >= 40, f"only {slow} requests saw the 0.5 s stall: the generator waited for it"
    assert result.histogram.percentile(99) > 0.25


# -- against real servers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(home: Path, settings: Settings, data: Any) -> dict[str, Any]:
    """One version through the whole pipeline, load test included."""
    version = register_forest(settings, MODEL, data)
    code, summary, err = deploy_json(home, MODEL, "--version", version)
    assert code == 0, err
    assert summary is not None
    stage = next(s for s in summary["stages"] if s["name"] == "loadtest")
    package = next(s for s in summary["stages"] if s["name"] == "package")
    tag = {c["name"]: c for c in package["checks"]}["package.bento"]["measured"]
    return {"home": home, "version": version, "stage": stage, "tag": tag, "summary": summary}


@pytest.mark.slow
def test_deploy_load_tests_the_bento_and_records_the_report(deployed: dict[str, Any]) -> None:
    import mlflow

    stage = deployed["stage"]
    assert stage["passed"] and not stage["skipped"], stage["reason"]
    checks = {c["name"]: c for c in stage["checks"]}
    assert checks["loadtest.p99"]["passed"] and checks["loadtest.candidate.ready"]["passed"]
    assert checks["loadtest.vs_champion.p99"]["skipped"]  # no champion in this registry
    assert stage["figures"]["candidate.p99_ms"] > 0
    files = {
        a.path
        for a in mlflow.MlflowClient().list_artifacts(deployed["summary"]["run_id"], "loadtest")
    }
    for name in (
        "loadtest.json",
        "latency_over_time.png",
        "latency_histogram.png",
        "loadtest.html",
    ):
        assert f"loadtest/{name}" in files


def _bodies(n: int = 50) -> list[bytes]:
    _, _, _, validation = breast_cancer()
    rows = validation.drop(columns=["target"]).head(n).to_dict(orient="records")
    return [json.dumps({"inputs": [r]}).encode() for r in rows]


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
def test_server_is_stopped_and_its_port_freed_after_the_gate(
    deployed: dict[str, Any], tmp_path: Path
) -> None:
    port = pick_port(None)
    launch = bento_launch(deployed["tag"], port, bento_env(deployed["home"]), None)
    with served(launch, port, tmp_path / "s.log", 60) as server:
        result = drive(f"{server.url}/predict", _bodies(), [Phase(100, 2.0)], warmup_s=0.5)
        pgid = server.proc.pid
    assert result.ok == result.sent == 200
    assert _group_gone(pgid), "a process of the server outlived the gate"
    assert port_free(port)


@pytest.mark.slow
def test_too_slow_fails_the_gate_and_shows_the_figures(
    deployed: dict[str, Any], tmp_path: Path
) -> None:
    port = pick_port(None)
    launch = bento_launch(deployed["tag"], port, bento_env(deployed["home"]), None)
    with served(launch, port, tmp_path / "s.log", 60) as server:
        result = drive(f"{server.url}/predict", _bodies(), [Phase(100, 1.0)])
    checks = {
        c.name: c
        for c in gate.slo_checks(
            result.figures(), LoadTest.model_validate({"slo": {"p99_ms": 0.001}})
        )
    }
    assert not checks["loadtest.p99"].passed
    assert "over the SLO of 0.001 ms" in checks["loadtest.p99"].reason
    assert "p50" in checks["loadtest.p99"].reason and "req/s" in checks["loadtest.p99"].reason


@pytest.mark.slow
def test_a_server_that_crashes_under_load_fails_the_gate(
    deployed: dict[str, Any], tmp_path: Path
) -> None:
    port = pick_port(None)
    launch = bento_launch(deployed["tag"], port, bento_env(deployed["home"]), None)
    with served(launch, port, tmp_path / "s.log", 60) as server:
        killer = threading.Timer(1.0, lambda: os.killpg(server.proc.pid, signal.SIGKILL))
        killer.start()
        result = drive(f"{server.url}/predict", _bodies(), [Phase(100, 4.0)], alive=server.exited)
        killer.join()
    assert result.stopped and "exited" in result.stopped
    checks = gate.slo_checks(result.figures(), LoadTest())
    assert [c.name for c in checks] == ["loadtest.server"] and not checks[0].passed
    assert port_free(port)


@pytest.mark.slow
def test_a_server_that_never_gets_ready_times_out_with_the_reason(
    deployed: dict[str, Any], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(deployed["home"] / "bentoml", home / "bentoml")
    name, version = deployed["tag"].split(":")
    onnx = home / "bentoml" / "bentos" / name / version / "src" / "model" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-4] + b"oops")
    port = pick_port(None)
    launch = bento_launch(deployed["tag"], port, bento_env(home), None)
    with pytest.raises(NotReady) as err, served(launch, port, tmp_path / "s.log", 8):
        pass
    assert "not ready after 8 s" in err.value.message
    assert "differ from the ones it was built with" in err.value.message
    assert port_free(port)


def test_a_port_in_use_is_refused_before_anything_starts() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port} .* already in use"):
            pick_port(port)
    assert pick_port(None) > 0


@pytest.mark.slow
def test_sigterm_during_a_load_test_still_stops_the_server(
    deployed: dict[str, Any], tmp_path: Path
) -> None:
    """The KFP step is killed mid-test: the server it started must go with it."""
    script = f"""
import sys
from pathlib import Path
from modelship.components.serving.server import bento_launch, served
from tests.support import bento_env
launch = bento_launch({deployed["tag"]!r}, {{port}}, bento_env(Path({str(deployed["home"])!r})), None)
with served(launch, {{port}}, Path({str(tmp_path / "s.log")!r}), 60) as server:
    print(server.proc.pid, flush=True)
    import time; time.sleep(120)
"""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", script.replace("{port}", str(port))],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    pgid = int(proc.stdout.readline())
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert _group_gone(pgid) and port_free(port)


@pytest.mark.slow
def test_find_max_mode_reports_the_highest_rate_within_the_slo(
    deployed: dict[str, Any], tmp_path: Path
) -> None:
    import mlflow

    policy = tmp_path / "find-max.yaml"
    policy.write_text(
        "loadtest:\n  mode: find_max\n  rate: 50\n  warmup_s: 0.5\n"
        "  find_max: {limit_rate: 200, probe_s: 1, bisections: 1}\n"
        "  slo: {p99_ms: 250}\n"  # the demo policy's, said here: the reason below names it
    )
    code, summary, err = deploy_json(
        deployed["home"], MODEL, "--version", deployed["version"], "--policy", str(policy)
    )
    assert code == 0, err
    assert summary is not None
    stage = next(s for s in summary["stages"] if s["name"] == "loadtest")
    check = {c["name"]: c for c in stage["checks"]}["loadtest.max_rate"]
    assert check["passed"] and check["measured"] == 200.0  # 50, 100, 200 all within the SLO
    assert "highest arrival rate with p99 <= 250 ms: 200 req/s (3 probes)" in check["reason"]
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(summary["run_id"], "loadtest")}
    assert "loadtest/find_max.png" in files
