"""State in MLflow that every pod and a laptop reach: documents, commands, and the lease that
keeps two controllers (or two monitor passes) from acting at once. Against a real MLflow store
(SQLite); the same calls go to a tracking server (tests/test_rollout_e2e.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from modelship.components.monitor.state import MlflowMonitorStore, MonitorStatus
from modelship.components.rollout.state import MlflowStatusStore, RolloutStatus
from modelship.core.settings import Settings
from modelship.registry.shared_state import Lease, LeaseHeld, SharedState
from modelship.registry.watcher import snapshot


@pytest.fixture()
def client(settings: Settings) -> MlflowClient:
    return MlflowClient(settings.tracking_uri, settings.registry_uri)


def _status(**changes: object) -> RolloutStatus:
    base = RolloutStatus(model="m", champion="1", challenger="2", strategy="canary",
                         policy_hash="h", started_at=1.0, updated_at=1.0)  # fmt: skip
    return base.model_copy(update=changes)


def test_documents_and_commands_reach_another_reader(
    client: MlflowClient, settings: Settings
) -> None:
    model = f"docs-{time.time_ns()}"
    pod = MlflowStatusStore(
        SharedState(client, settings, model, "rollout"), Lease(client, model, "rollout")
    )
    laptop = MlflowStatusStore(
        SharedState(client, settings, model, "rollout"), Lease(client, model, "rollout")
    )
    assert laptop.load() is None
    pod.save(_status(weight=20))
    assert laptop.load() == _status(weight=20)  # the laptop found the same run by its tags
    assert not pod.command_pending()
    laptop.send("promote")
    assert pod.command_pending()
    assert pod.take_command() == "promote"
    assert pod.take_command() is None and not laptop.command_pending()  # taken once
    laptop.send("no-such-command")  # type: ignore[arg-type]
    assert pod.take_command() is None


def test_one_lease_holder_at_a_time_and_the_second_is_told_who(client: MlflowClient) -> None:
    model = f"lease-{time.time_ns()}"
    first, second = Lease(client, model, "rollout"), Lease(client, model, "rollout")
    second.holder = "other-pod:1"
    first.acquire()
    with pytest.raises(LeaseHeld) as held:
        second.acquire()
    assert f"held by {first.holder} until" in held.value.message
    with pytest.raises(LeaseHeld):
        second.renew()
    first.renew()  # the holder renews
    first.release()
    second.acquire()  # free again
    with pytest.raises(LeaseHeld, match="no longer held by this process"):
        first.renew()
    second.release()


def test_an_expired_lease_is_taken_over(client: MlflowClient) -> None:
    model = f"expired-{time.time_ns()}"
    dead = Lease(client, model, "monitor", ttl_s=0.2)
    dead.holder = "crashed-pod:7"
    dead.acquire()  # and never renewed: its process died
    time.sleep(0.3)
    alive = Lease(client, model, "monitor")
    alive.acquire()
    with pytest.raises(LeaseHeld):
        dead.renew()
    alive.release()


def test_the_monitor_cursor_is_kept_in_mlflow(client: MlflowClient, settings: Settings) -> None:
    model = f"monitor-{time.time_ns()}"
    store = MlflowMonitorStore(
        SharedState(client, settings, model, "monitor"), Lease(client, model, "monitor")
    )
    store.save(MonitorStatus(model=model, version="3", cursor_us=42, breaches=1))
    again = MlflowMonitorStore(
        SharedState(client, settings, model, "monitor"), Lease(client, model, "monitor")
    )
    loaded = again.load()
    assert loaded is not None and (loaded.cursor_us, loaded.breaches) == (42, 1)


def test_a_held_lease_is_not_a_model_the_watcher_deploys(
    client: MlflowClient, tmp_path: Path
) -> None:
    lease = Lease(client, f"watched-{time.time_ns()}", "rollout")
    lease.acquire()
    try:
        assert not [name for name in snapshot(client) if name.startswith("modelship-lock.")]
    finally:
        lease.release()
