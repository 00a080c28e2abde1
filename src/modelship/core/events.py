"""Progress events from stages to whoever shows them (the CLI's live view).

Stages run in other processes (KFP steps), so events travel through an append-only JSON-lines
file named by ``MODELSHIP_EVENTS``. Without it (a KFP cluster run) events go nowhere.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVENTS_ENV = "MODELSHIP_EVENTS"


@dataclass(frozen=True)
class EventSink:
    path: Path | None

    @classmethod
    def from_env(cls) -> EventSink:
        value = os.environ.get(EVENTS_ENV)
        return cls(Path(value) if value else None)

    def emit(self, stage: str, status: str, **data: Any) -> None:
        if self.path is None:
            return
        record = {"t": time.time(), "stage": stage, "status": status, **data}
        # one write() of one line: appends from several processes do not interleave
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")


def follow(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """New complete events since ``offset``, and the offset to continue from."""
    if not path.exists():
        return [], offset
    with path.open() as f:
        f.seek(offset)
        chunk = f.read()
    complete, _, _ = chunk.rpartition("\n")
    if not complete:
        return [], offset
    events = [json.loads(line) for line in complete.split("\n") if line.strip()]
    return events, offset + len(complete) + 1


def read_all(path: Path) -> Iterator[dict[str, Any]]:
    events, _ = follow(path)
    yield from events


#: for callers that show no progress
NO_EVENTS = EventSink(None)
