"""What the monitor remembers between runs: where it read up to, and the breaches in a row.

Saved whole (temporary file, then rename) in ``$MODELSHIP_HOME/monitor/MODEL.json`` after each
window, so ``--once`` from cron and ``--watch`` pick up where the last run stopped, and a
restart never evaluates a window twice.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from modelship.core.files import write_atomic

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


class MonitorStore:
    def __init__(self, folder: Path, model: str) -> None:
        self.path = folder / f"{model}.json"

    def load(self) -> MonitorStatus | None:
        try:
            return MonitorStatus.model_validate_json(self.path.read_text())
        except FileNotFoundError:
            return None

    def save(self, status: MonitorStatus) -> None:
        status.windows = status.windows[-KEEP_WINDOWS:]
        status.events = status.events[-200:]
        write_atomic(self.path, status.model_dump_json(indent=2))
