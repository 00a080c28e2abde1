"""The rollout's faults against real processes: a gateway, two stand-in servers, a controller."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelship.components.rollout.controller import Controller
from modelship.components.rollout.state import Phase, StatusStore
from modelship.components.serving.loadgen import Phase as LoadPhase
from modelship.components.serving.loadgen import run as drive
from modelship.components.targets.local import GatewayRouter
from modelship.policies.schema import Analysis, CanaryStep, Rollout
from tests.servers.controller import FileRegistry, NoLogs
from tests.support import BODY, MODELSHIP, TOKEN, Stack, gateway_stack


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[Stack]:
    with gateway_stack(tmp_path) as s:
        yield s


def controller_process(
    home: Path, stack: Stack, policy: Rollout, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tests.servers.controller", str(home), stack.url,
           policy.model_dump_json()]  # fmt: skip
    # an MLflow URI left in this process's environment by an earlier test (MLflow exports the
    # one it was set to) would point the controller at a server that is gone
    env = _without_mlflow() | {"MODELSHIP_GATEWAY_TOKEN": TOKEN} | (env or {})
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _without_mlflow() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_crashing_challenger_aborts_the_rollout_without_client_errors(
    stack: Stack, tmp_path: Path
) -> None:
    policy = Rollout(steps=[CanaryStep(weight=50, pause_s=30), CanaryStep(weight=100)],
                     tick_s=0.05)  # fmt: skip
    router = GatewayRouter(stack.url, TOKEN)
    book = FileRegistry(tmp_path / "registry.log")
    controller = Controller(StatusStore(tmp_path, "m"), router, router, NoLogs(), book, policy)
    status = controller.begin("m", "1", "2", "h")
    done: dict[str, object] = {}
    worker = threading.Thread(target=lambda: done.update(status=controller.run(status)))
    worker.start()
    wait_for(lambda: router.get_weights().challenger == 50)
    killer = threading.Timer(1.0, lambda: stack.procs["challenger"].send_signal(signal.SIGKILL))
    killer.start()
    result = drive(f"{stack.url}/predict", [BODY], [LoadPhase(200, 3.0)], connections=64)
    worker.join(10)
    final = done["status"]
    assert final.phase is Phase.ABORTED and "ejected" in final.reason  # type: ignore[attr-defined]
    assert not result.errors, result.errors  # retried on the champion, ejected within a second
    assert router.get_weights().challenger == 0
    assert controller.abort_ms is not None  # how fast: benchmarks/rollout.py
    assert (tmp_path / "registry.log").read_text().splitlines()[-1].startswith("rolled_back 2")


@pytest.mark.slow
def test_a_killed_controller_resumes_its_step(stack: Stack, tmp_path: Path) -> None:
    policy = Rollout(steps=[CanaryStep(weight=30, pause_s=4, analysis=False),
                            CanaryStep(weight=100, pause_s=0, analysis=False)],
                     tick_s=0.1)  # fmt: skip
    first = controller_process(tmp_path, stack, policy)
    store = StatusStore(tmp_path, "m")
    wait_for(lambda: (s := store.load()) is not None and s.step_started_at is not None)
    started = store.load().step_started_at  # type: ignore[union-attr]
    time.sleep(1.0)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert StatusStore(tmp_path, "m").load().phase is Phase.PROGRESSING  # type: ignore[union-attr]
    second = controller_process(tmp_path, stack, policy)
    out, _ = second.communicate(timeout=30)
    final = store.load()
    assert final is not None and final.phase is Phase.PROMOTED, out
    assert final.traffic[0][0] == started  # the step kept its start: 4 s in all, not 5
    assert final.traffic[1][0] - started == pytest.approx(4.0, abs=0.5)
    assert any(e.endswith("resumed") for e in final.events)
    assert (tmp_path / "registry.log").read_text().split() == ["started", "2", "promoted", "2"]
    assert stack.predict() == "challenger"  # the gateway now sends everything to v2


@pytest.mark.slow
def test_a_paused_rollout_waits_for_the_cli(stack: Stack, tmp_path: Path) -> None:
    policy = Rollout(steps=[CanaryStep(weight=20, pause_s=None),
                            CanaryStep(weight=60, pause_s=None)], tick_s=0.1)  # fmt: skip
    proc = controller_process(tmp_path / "rollouts", stack, policy)
    env = _without_mlflow() | {"MODELSHIP_HOME": str(tmp_path)}
    store = StatusStore(tmp_path / "rollouts", "m")
    # the person's commands, from a folder of their own: nothing may land there
    here = tmp_path / "where-the-person-stands"
    here.mkdir()
    try:
        wait_for(lambda: (s := store.load()) is not None and s.phase is Phase.PAUSED)
        shown = subprocess.run([MODELSHIP, "rollout", "status", "m", "--json"], env=env, cwd=here,
                               capture_output=True, text=True, check=True)  # fmt: skip
        assert json.loads(shown.stdout)["weight"] == 20
        moved = subprocess.run([MODELSHIP, "rollout", "promote", "m"], env=env, cwd=here,
                               capture_output=True, text=True, check=True)  # fmt: skip
        assert "promote: done" in moved.stdout
        assert GatewayRouter(stack.url, TOKEN).get_weights().challenger == 60
        stopped = subprocess.run([MODELSHIP, "rollout", "abort", "m"], env=env, cwd=here,
                                 capture_output=True, text=True, check=True)  # fmt: skip
        assert "aborted by hand" in stopped.stdout
        assert GatewayRouter(stack.url, TOKEN).get_weights().challenger == 0
        again = subprocess.run([MODELSHIP, "rollout", "abort", "m"], env=env, cwd=here,
                               capture_output=True, text=True)  # fmt: skip
        assert again.returncode == 2 and "is over (aborted)" in again.stderr
    finally:
        proc.kill()
        proc.wait()
    # both requests are in the model's audit trail, in MODELSHIP_HOME's store; before, they went
    # to an MLflow store the commands made in the folder they ran from
    assert list(here.iterdir()) == []
    trail = subprocess.run([MODELSHIP, "audit", "m", "--json"], env=env, cwd=here,
                           capture_output=True, text=True, check=True)  # fmt: skip
    actions = [json.loads(line)["action"] for line in trail.stdout.splitlines()]
    assert "promote requested" in actions and "abort requested" in actions, actions


@pytest.mark.slow
def test_a_controller_in_a_pod_is_promoted_from_a_laptop_through_mlflow(
    stack: Stack, tmp_path: Path
) -> None:
    # the pod and the laptop share nothing but a real `mlflow server`: no folder, no process
    from modelship.components.rollout.state import MlflowStatusStore
    from tests.support import mlflow_server

    policy = Rollout(steps=[CanaryStep(weight=20, pause_s=None),
                            CanaryStep(weight=60, pause_s=None)], tick_s=0.2)  # fmt: skip
    with mlflow_server(tmp_path / "mlflow") as url:
        pod = {"MLFLOW_TRACKING_URI": url, "MODELSHIP_HOME": str(tmp_path / "pod")}
        laptop = _without_mlflow() | {
            "MLFLOW_TRACKING_URI": url,
            "MODELSHIP_HOME": str(tmp_path / "laptop"),
        }
        proc = controller_process(tmp_path / "pod", stack, policy, pod)
        try:

            def shown() -> dict[str, object]:
                out = subprocess.run([MODELSHIP, "rollout", "status", "m", "--json"], env=laptop,
                                     capture_output=True, text=True)  # fmt: skip
                return json.loads(out.stdout) if out.returncode == 0 else {}

            wait_for(lambda: shown().get("phase") == "paused", timeout=60)
            assert shown()["weight"] == 20
            # a second controller (another pod, the same model) is refused: the lease is held
            second = controller_process(tmp_path / "pod2", stack, policy, pod)
            out, _ = second.communicate(timeout=60)
            assert second.returncode != 0
            assert b"modelship-lock.m.rollout is held by" in out, out
            moved = subprocess.run([MODELSHIP, "rollout", "promote", "m"], env=laptop,
                                   capture_output=True, text=True, timeout=120)  # fmt: skip
            assert "promote: done" in moved.stdout, moved.stdout + moved.stderr
            assert GatewayRouter(stack.url, TOKEN).get_weights().challenger == 60
            stopped = subprocess.run([MODELSHIP, "rollout", "abort", "m"], env=laptop,
                                     capture_output=True, text=True, timeout=120)  # fmt: skip
            assert "aborted by hand" in stopped.stdout, stopped.stdout + stopped.stderr
            assert GatewayRouter(stack.url, TOKEN).get_weights().challenger == 0
            proc.wait(timeout=30)
        finally:
            proc.kill()
            proc.wait()
        # nothing was kept on either machine's disk, and the lease is gone with its holder
        assert not (tmp_path / "pod" / "rollouts").exists()
        assert not (tmp_path / "laptop" / "rollouts").exists()
        from mlflow import MlflowClient

        from modelship.core.settings import Settings
        from modelship.registry.shared_state import SharedState

        client = MlflowClient(url)
        assert "modelship-lock.m.rollout" not in [m.name for m in client.search_registered_models()]
        settings = Settings.from_env({"MLFLOW_TRACKING_URI": url, "MODELSHIP_HOME": str(tmp_path)})
        state = SharedState(client, settings, "m", "rollout")
        assert state.tag(MlflowStatusStore.COMMAND_TAG) is None  # each command taken once
        assert '"phase": "aborted"' in (state.read("status.json") or "")


def test_rollout_status_without_a_rollout_says_how_to_start_one(tmp_path: Path) -> None:
    env = _without_mlflow() | {"MODELSHIP_HOME": str(tmp_path)}
    shown = subprocess.run([MODELSHIP, "rollout", "status", "nothing"], env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert shown.returncode == 2 and "modelship deploy nothing" in shown.stderr


def test_a_bad_canary_policy_is_refused_before_any_traffic_moves() -> None:
    with pytest.raises(ValueError, match="must not decrease"):
        Rollout(steps=[CanaryStep(weight=50), CanaryStep(weight=10)])
    with pytest.raises(ValueError, match="less than or equal to 100"):
        CanaryStep(weight=150)
    with pytest.raises(ValueError, match="min_requests"):
        Analysis.model_validate({"min_requests": -1, "bogus": 1})
