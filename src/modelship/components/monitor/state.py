"""What the monitor remembers between runs: where it read up to, and the breaches in a row.

Saved whole after each window, so ``--once`` from cron, ``--watch`` and a recurring pipeline run
pick up where the last pass stopped, and a restart never evaluates a window twice: in
``$MODELSHIP_HOME/monitor/MODEL.json`` (temporary file, then rename) on the embedded store, in
MLflow (:mod:`modelship.registry.shared_state`) against a tracking server, where every pod
reaches it and a lease keeps two passes from acting at once.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from modelship.core.files import write_atomic
from modelship.core.settings import Settings
from modelship.registry.shared_state import Lease, SharedState, state_and_lease

#: windows kept in the status (the MLflow runs keep them all)
KEEP_WINDOWS = 50


class WindowOutcome(StrEnum):
    STABLE = "stable"
    DRIFT = "drift"
    #: fewer rows than min_rows: nothing is concluded, nothing is done
    INCONCLUSIVE = "inconclusive"
    #: the window could not be judged (reference unreadable): alert, never roll back
    ERROR = "error"


class Action(StrEnum):
    NONE = "none"
    ALERT = "alert"
    ROLLBACK = "rollback"


class WindowRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    start_us: int
    end_us: int
    rows: int
    outcome: WindowOutcome
    reason: str
    share: float | None = None
    drifted: list[str] = []
    skipped_rows: int = 0
    run_id: str | None = None
    figures: dict[str, Any] = {}


class PendingRollback(BaseModel):
    """A rollback under way, saved before anything moves: a pass killed half way (traffic
    switched, aliases not yet) leaves it behind, and the next pass finishes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rolled_back: str
    restored: str
    reason: str


class MonitorStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    #: the champion being watched; a new champion starts a new count
    version: str
    #: the log is read after this time (UTC microseconds): windows never overlap
    cursor_us: int = 0
    breaches: int = 0
    last_action_at: float | None = None
    windows: list[WindowRecord] = []
    events: list[str] = []
    rolling_back: PendingRollback | None = None


class MonitorStateStore(Protocol):
    def load(self) -> MonitorStatus | None: ...
    def save(self, status: MonitorStatus) -> None: ...
    def acquire(self) -> None:
        """Become the one pass acting for this model (raises ``LeaseHeld`` otherwise)."""

    def release(self) -> None: ...


def monitor_store(settings: Settings, model: str) -> MonitorStateStore:
    """A file under ``$MODELSHIP_HOME/monitor`` on the embedded store, else MLflow."""
    if settings.embedded:
        return MonitorStore(settings.home / "monitor", model)
    return MlflowMonitorStore(*state_and_lease(settings, model, "monitor", ttl_s=600.0))


def _trimmed(status: MonitorStatus) -> str:
    status.windows = status.windows[-KEEP_WINDOWS:]
    status.events = status.events[-200:]
    return status.model_dump_json(indent=2)


class MlflowMonitorStore:
    def __init__(self, state: SharedState, lease: Lease) -> None:
        self.state, self.lease = state, lease

    def load(self) -> MonitorStatus | None:
        text = self.state.read("status.json")
        return None if text is None else MonitorStatus.model_validate_json(text)

    def save(self, status: MonitorStatus) -> None:
        self.state.write("status.json", _trimmed(status))
        if self.lease.renewed_at:
            self.lease.renew_if_due()

    def acquire(self) -> None:
        self.lease.acquire()

    def release(self) -> None:
        self.lease.release()


class MonitorStore:
    def __init__(self, folder: Path, model: str) -> None:
        self.path = folder / f"{model}.json"

    def acquire(self) -> None:
        """One machine: a pass runs under ``--once`` or ``--watch``, nothing more to hold."""

    def release(self) -> None:
        pass

    def load(self) -> MonitorStatus | None:
        try:
            return MonitorStatus.model_validate_json(self.path.read_text())
        except FileNotFoundError:
            return None

    def save(self, status: MonitorStatus) -> None:
        write_atomic(self.path, _trimmed(status))
