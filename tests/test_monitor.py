"""The drift monitor: its decisions tick by tick, and its faults against real files and a store."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelship.components.monitor.decide import decide
from modelship.components.monitor.notify import signature
from modelship.components.monitor.stage import PassResult, run_pass
from modelship.components.monitor.state import Action, MonitorStatus, WindowOutcome, WindowRecord
from modelship.components.targets.local import GatewayRouter
from modelship.core.errors import RollbackFailed
from modelship.core.settings import Settings
from modelship.policies.schema import Monitor, Policy
from modelship.registry.client import Registry
from tests.support import TOKEN, Stack, register_forest, version_tags

POLICY = Monitor(consecutive_windows=2, cooldown_s=600)


def window(outcome: WindowOutcome, end: int = 1) -> WindowRecord:
    return WindowRecord(version="2", start_us=end - 1, end_us=end, rows=500, outcome=outcome,
                        reason=str(outcome))  # fmt: skip


class Run:
    def __init__(self, policy: Monitor = POLICY, has_previous: bool = True) -> None:
        self.status = MonitorStatus(model="m", version="2")
        self.policy = policy
        self.has_previous = has_previous
        self.now = 1000.0
        self.end = 0

    def see(self, outcome: WindowOutcome, after: float = 60.0) -> Action:
        self.now += after
        self.end += 10
        d = decide(self.status, window(outcome, self.end), self.policy, self.has_previous, self.now)
        self.status = d.status
        return d.action


def test_drift_must_last_before_the_monitor_acts() -> None:
    run = Run()
    assert run.see(WindowOutcome.DRIFT) is Action.NONE
    assert run.see(WindowOutcome.STABLE) is Action.NONE  # the run of breaches is broken
    assert run.see(WindowOutcome.DRIFT) is Action.NONE
    assert run.see(WindowOutcome.DRIFT) is Action.ROLLBACK
    assert run.status.breaches == 0 and run.status.cursor_us == run.end


def test_inconclusive_windows_neither_break_nor_extend_a_run() -> None:
    run = Run()
    run.see(WindowOutcome.DRIFT)
    assert run.see(WindowOutcome.INCONCLUSIVE) is Action.NONE
    assert run.status.breaches == 1
    assert run.see(WindowOutcome.DRIFT) is Action.ROLLBACK


def test_errors_alert_and_never_roll_back() -> None:
    run = Run()
    for _ in range(5):
        assert run.see(WindowOutcome.ERROR) is Action.ALERT
    assert run.status.breaches == 0


def test_no_previous_champion_alerts_instead() -> None:
    run = Run(has_previous=False)
    run.see(WindowOutcome.DRIFT)
    assert run.see(WindowOutcome.DRIFT) is Action.ALERT
    assert "no previous champion" in run.status.events[-1]


def test_cooldown_and_the_policy_action() -> None:
    run = Run(Monitor(consecutive_windows=1, cooldown_s=600, action="alert"))
    assert run.see(WindowOutcome.DRIFT) is Action.ALERT
    assert run.see(WindowOutcome.DRIFT, after=60) is Action.NONE  # cooling down
    assert "cooldown" in run.status.events[-1]
    assert run.see(WindowOutcome.DRIFT, after=600) is Action.ALERT
    quiet = Run(Monitor(consecutive_windows=1, action="none"))
    assert quiet.see(WindowOutcome.DRIFT) is Action.NONE


# -- against a real store, real log files, a real gateway ---------------------------------------


SECRET = "notice-secret"


@pytest.fixture(scope="module")
def store(home: Path, settings: Settings, data: Any) -> dict[str, Any]:
    """Two registered forests: v2 champion, v1 previous; and two models with no previous."""
    registry = Registry()
    for name in ("watched", "lonely", "piped"):
        versions = [
            register_forest(settings, name, data) for _ in range(2 if name == "watched" else 1)
        ]
        for v in versions:
            registry.promote(registry.resolve(name, version=v))
    return {"home": home, "settings": settings, "reference": data[2].drop(columns=["target"])}


def policy(**monitor: Any) -> Policy:
    base = {"window": {"rows": 200}, "min_rows": 100, "consecutive_windows": 2,
            "cooldown_s": 0, "notify_url": None}  # fmt: skip
    return Policy.model_validate({"monitor": base | monitor})


def write_log(home: Path, model: str, version: str, frame: pd.DataFrame, start: float) -> None:
    folder = home / "inference" / model / f"v{version}"
    folder.mkdir(parents=True, exist_ok=True)
    stamps = [int((start + i * 0.001) * 1e6) for i in range(len(frame))]
    table = pa.table({
        **{c: pa.array(frame[c].to_numpy(np.float32)) for c in frame},
        "request_id": pa.array([uuid.uuid4().hex for _ in range(len(frame))]),
        "timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC")),
        "prediction": pa.array(np.zeros(len(frame), dtype=np.int64)),
    })  # fmt: skip
    path = folder / f"part-{start:.6f}-{uuid.uuid4().hex[:6]}.parquet"
    pq.write_table(table, path)
    # as the service does it: a part is written once its rows have arrived
    written = stamps[-1] / 1e6 + 1
    os.utime(path, (written, written))


def rows(reference: pd.DataFrame, n: int, shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    sample = reference.sample(n, replace=True, random_state=seed).reset_index(drop=True)
    return sample * (1.0 + shift)


def monitor(store: dict[str, Any], model: str, pol: Policy,
            router: GatewayRouter | None = None, **kw: Any) -> PassResult:  # fmt: skip
    return run_pass(model, pol, registry=Registry(), home=store["home"],
                    bentoml_home=store["home"] / "bentoml",
                    log_root=str(store["home"] / "inference"), router=router, secret=SECRET,
                    log_reports=kw.pop("log_reports", False), **kw)  # fmt: skip


class Notices:
    def __init__(self) -> None:
        self.received: list[tuple[dict[str, Any], dict[str, str], bytes]] = []
        seen = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                seen.append(
                    (json.loads(body), {k.lower(): v for k, v in self.headers.items()}, body)
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/notices"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def actions(self) -> list[str]:
        return [n["action"] for n, _, _ in self.received]


@pytest.fixture()
def notices() -> Iterator[Notices]:
    n = Notices()
    yield n
    n.server.shutdown()


def champion(model: str) -> str:
    ref = Registry().champion(model)
    assert ref is not None
    return ref.version


def test_traffic_like_the_reference_is_stable_and_read_once(store: dict[str, Any]) -> None:
    write_log(store["home"], "watched", champion("watched"), rows(store["reference"], 450),
              time.time() + 1)  # fmt: skip
    first = monitor(store, "watched", policy())
    assert [w.outcome for w in first.windows] == [WindowOutcome.STABLE] * 2
    assert first.waiting_rows == 50 and not first.actions
    again = monitor(store, "watched", policy())
    assert again.windows == [] and again.waiting_rows == 50  # nothing judged twice


def test_small_time_windows_are_inconclusive(store: dict[str, Any]) -> None:
    write_log(store["home"], "lonely", champion("lonely"), rows(store["reference"], 30), 2e9)
    write_log(store["home"], "lonely", champion("lonely"), rows(store["reference"], 30), 2e9 + 120)
    result = monitor(store, "lonely", policy(window={"rows": None, "minutes": 1}))
    assert result.windows and all(w.outcome is WindowOutcome.INCONCLUSIVE for w in result.windows)
    assert not result.actions and champion("lonely") == "1"


def test_corrupt_log_records_are_skipped_and_counted(store: dict[str, Any]) -> None:
    model, version = "lonely", champion("lonely")
    folder = store["home"] / "inference" / model / f"v{version}"
    bad = rows(store["reference"], 210, seed=3)
    bad.iloc[:10, 0] = np.nan
    write_log(store["home"], model, version, bad, 3e9)
    torn = folder / "part-9999999999-torn.parquet"
    torn.write_bytes(b"PAR1 not really parquet")
    os.utime(torn, (3e9 + 1, 3e9 + 1))  # torn while that batch was being written
    result = monitor(store, model, policy())
    assert [w.outcome for w in result.windows] == [WindowOutcome.STABLE]
    assert result.windows[0].skipped_rows == 10
    assert result.windows[0].figures["bad_files"] == 1


def test_unreadable_reference_alerts_and_never_rolls_back(
    store: dict[str, Any], notices: Notices
) -> None:
    before = champion("watched")
    pol = Policy.model_validate({
        "validate": {"reference_data": {"uri": str(store["home"] / "missing.parquet")}},
        "monitor": {"notify_url": notices.url, "window": {"rows": 200}, "min_rows": 100},
    })  # fmt: skip
    result = monitor(store, "watched", pol)
    assert [w.outcome for w in result.windows] == [WindowOutcome.ERROR]
    assert result.actions[0].startswith("alert") and result.rollback is None
    assert notices.actions() == ["alert"] and champion("watched") == before
    notice, headers, body = notices.received[0]
    expected = signature(SECRET, headers["x-modelship-timestamp"], body)
    assert hmac.compare_digest(headers["x-modelship-signature"], expected)
    assert "reference data could not be read" in notice["reason"]
    assert expected != "sha256=" + hashlib.sha256(body).hexdigest()


def test_no_previous_champion_alerts_instead_of_rolling_back(
    store: dict[str, Any], notices: Notices
) -> None:
    write_log(store["home"], "lonely", "1", rows(store["reference"], 400, shift=1.0), 4e9)
    result = monitor(store, "lonely", policy(notify_url=notices.url))
    assert [w.outcome for w in result.windows] == [WindowOutcome.DRIFT] * 2
    assert result.rollback is None and "no previous champion" in result.actions[-1]
    assert notices.actions() == ["alert"] and champion("lonely") == "1"


@pytest.mark.slow
def test_drift_rolls_back_through_the_gateway(
    store: dict[str, Any], notices: Notices, tmp_path: Path
) -> None:
    stack = Stack(tmp_path)
    try:
        stack.start_backend("champion")
        stack.start_backend("challenger")  # the previous champion, warm at weight 0
        stack.start_gateway()
        router = GatewayRouter(stack.url, TOKEN)
        # as `modelship serve` runs it: the champion, and the previous champion at weight 0
        stack_versions = {"champion": champion("watched"), "challenger": "1"}
        router._call("PUT", "/admin/backends", {
            v: {"url": f"http://127.0.0.1:{stack.ports[v]}", "version": stack_versions[v]}
            for v in ("champion", "challenger")})  # fmt: skip
        drifted = rows(store["reference"], 400, shift=1.0, seed=5)
        write_log(store["home"], "watched", champion("watched"), drifted, time.time())
        result = monitor(store, "watched", policy(notify_url=notices.url), router=router,
                         log_reports=True)  # fmt: skip
        assert [w.outcome for w in result.windows] == [WindowOutcome.DRIFT] * 2
        done = result.rollback
        assert done is not None and (done.rolled_back, done.restored) == ("2", "1")
        assert (
            done.switched == "gateway" and done.traffic_s is not None
        )  # timed in benchmarks/monitor.py
        assert stack.predict() == "challenger"  # every request on the old champion's server
        assert champion("watched") == "1"
        tags = version_tags("watched")["2"]
        assert (
            tags["modelship.state"] == "rolled_back"
            and "windows in a row" in tags["modelship.reason"]
        )
        assert tags["modelship.rollback_report"].startswith(f"runs:/{result.windows[-1].run_id}/")
        assert notices.actions() == ["rollback"]
        assert notices.received[0][0]["restored"] == "1"
        run_id = result.windows[0].run_id
        import mlflow

        files = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "monitor")}
        assert "monitor/drift_report.html" in files
    finally:
        stack.stop()


@pytest.mark.slow
def test_a_rollback_that_cannot_complete_is_loud_and_changes_nothing(
    store: dict[str, Any], notices: Notices, tmp_path: Path
) -> None:
    registry = Registry()
    registry.promote(registry.resolve("watched", version="2"))  # v2 champion, v1 previous again
    stack = Stack(tmp_path)
    try:
        stack.start_backend("champion")
        stack.start_gateway("--challenger", "http://127.0.0.1:9@v1")  # its server never started
        router = GatewayRouter(stack.url, TOKEN)
        drifted = rows(store["reference"], 400, shift=1.0, seed=6)
        write_log(store["home"], "watched", "2", drifted, time.time())
        time.sleep(1.0)  # the gateway's health checks find v1 down
        with pytest.raises(RollbackFailed, match="fails its health checks"):
            monitor(store, "watched", policy(notify_url=notices.url), router=router)
        assert champion("watched") == "2" and stack.predict() == "champion"
        assert notices.actions() == ["rollback_failed"]
    finally:
        stack.stop()


@pytest.mark.slow
def test_a_pass_killed_mid_rollback_is_finished_by_the_next(
    store: dict[str, Any], tmp_path: Path
) -> None:
    """SIGKILL after the gateway switched and before the aliases moved (the registry's writes
    held back by a lock on the embedded store): the next pass makes them agree."""
    registry = Registry()
    registry.promote(registry.resolve("watched", version="2"))  # v2 champion, v1 previous
    stack = Stack(tmp_path)
    db = sqlite3.connect(store["home"] / "mlflow.db", timeout=0, isolation_level=None)
    try:
        stack.start_backend("champion")
        stack.start_backend("challenger")
        stack.start_gateway()
        router = GatewayRouter(stack.url, TOKEN)
        router._call("PUT", "/admin/backends", {
            v: {"url": f"http://127.0.0.1:{stack.ports[v]}", "version": version}
            for v, version in (("champion", "2"), ("challenger", "1"))})  # fmt: skip
        write_log(store["home"], "watched", "2", rows(store["reference"], 400, shift=1.0, seed=7),
                  time.time())  # fmt: skip
        db.execute("BEGIN IMMEDIATE")  # readers go on; the pass' first registry write waits
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        killed = subprocess.Popen(
            [sys.executable, "-m", "tests.servers.monitor_pass", str(store["home"]), "watched",
             stack.url, policy().model_dump_json()],
            env=env | {"MODELSHIP_GATEWAY_TOKEN": TOKEN}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while router.describe()["backends"]["champion"]["version"] != "1":
            assert killed.poll() is None, killed.communicate()[0]
            assert time.monotonic() < deadline, "the pass never switched the gateway"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        db.execute("ROLLBACK")
        assert champion("watched") == "2"  # traffic on v1, aliases still on v2: the half state
        result = monitor(store, "watched", policy(), router=router)
        assert result.actions[0].startswith("finished the rollback of v2 to v1"), result.actions
        assert champion("watched") == "1" and stack.predict() == "challenger"
        assert "previous" not in Registry().resolve("watched", version="1").aliases
        assert version_tags("watched")["2"]["modelship.state"] == "rolled_back"
    finally:
        db.close()
        stack.stop()


def test_a_version_serving_again_is_judged_only_on_rows_from_its_new_start(
    store: dict[str, Any], settings: Settings, data: Any
) -> None:
    # v2 drifted and was rolled back; fixed upstream, the same v2 goes through a canary and is
    # promoted again. Its log still holds the drifted rows of the first time: the monitor must
    # judge only what it served since its canary began, or it rolls back at once.
    from modelship.components.monitor.rollback import record_rollback

    registry = Registry()
    v1, v2 = (registry.resolve("again", version=register_forest(settings, "again", data))
              for _ in range(2))  # fmt: skip
    registry.promote(v1)
    registry.promote(v2)
    write_log(store["home"], "again", v2.version,
              rows(store["reference"], 400, shift=1.0, seed=11), time.time() - 5)  # fmt: skip
    record_rollback(registry, v2, v1, "drift (the test says so)")
    assert champion("again") == v1.version
    registry.set_challenger(v2)
    registry.promote(registry.resolve("again", version=v2.version))
    write_log(store["home"], "again", v2.version, rows(store["reference"], 400, seed=12),
              time.time() + 1)  # fmt: skip
    result = monitor(store, "again", policy(consecutive_windows=1))
    assert [w.outcome for w in result.windows] == [WindowOutcome.STABLE] * 2, result.windows
    assert result.rollback is None and champion("again") == v2.version


def test_late_labels_judge_the_window_quality(store: dict[str, Any]) -> None:
    from modelship.components.monitor.drift import Reference
    from modelship.components.monitor.stage import Baseline, quality_check
    from modelship.policies.schema import Labels

    reference = store["reference"]
    kinds = dict.fromkeys(reference, "num")
    base = Baseline(Reference(reference, kinds), None, reference, kinds, quality=0.95)
    window = pd.DataFrame({"request_id": [f"r{i}" for i in range(100)], "row": 0,
                           "prediction": [1] * 100})  # fmt: skip
    labels = pd.DataFrame({"request_id": [f"r{i}" for i in range(80)],
                           "label": [1] * 60 + [0] * 20})  # fmt: skip
    spec = Labels(uri="unused", max_drop=0.05)
    reason, figures = quality_check(base, window, labels, spec, min_rows=50)
    assert figures == {"labelled_rows": 80, "accuracy": 0.75}
    assert reason is not None and "accuracy 0.750 on 80 labelled rows" in reason
    fine = labels.assign(label=1)
    assert quality_check(base, window, fine, spec, min_rows=50)[0] is None
    few = labels.head(5)  # labels still arriving: not judged yet
    assert quality_check(base, window, few, spec, min_rows=50) == (None, {"labelled_rows": 5})


@pytest.mark.slow
def test_the_monitor_pipeline_runs_a_pass_under_kfp_local(
    store: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kfp import local

    from modelship.pipelines.monitor import monitor_pipeline

    for key, value in store["settings"].child_env().items():
        monkeypatch.setenv(key, value)
    write_log(store["home"], "piped", "1", rows(store["reference"], 250, seed=9), 6e9)
    # the policy travels as text, as `modelship submit --monitor` sends it
    policy = "monitor: {window: {rows: 250}, min_rows: 100}\n"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = monitor_pipeline(model_name="piped", policy_yaml=policy)
    report = json.loads(Path(task.output.path).read_text())
    assert [w["rows"] for w in report["windows"]] == [250]
    assert report["windows"][0]["outcome"] == "stable", report
    assert report["windows"][0]["run_id"]  # its Evidently report went to MLflow
