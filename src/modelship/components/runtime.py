"""What every pipeline step does around its stage: progress events and errors people can read.

A step that fails prints one ``MODELSHIP_ERROR {json}`` line (found in KFP logs) and emits an
``error`` event (read by the CLI), then re-raises so the orchestrator marks the task failed.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from modelship.core.errors import ModelshipError
from modelship.core.events import EventSink
from modelship.core.lifeline import watch_anchor

T = TypeVar("T")
ERROR_MARKER = "MODELSHIP_ERROR"


def run_step(stage: str, body: Callable[[EventSink], T]) -> T:
    watch_anchor()  # on this machine, the step ends when the process running the pipeline does
    events = EventSink.from_env()
    events.emit(stage, "start")
    t0 = time.perf_counter()
    try:
        result = body(events)
    except ModelshipError as e:
        error = {
            "type": type(e).__name__,
            "exit_code": e.exit_code,
            "message": e.message,
            "hint": e.hint,
        }
        events.emit(stage, "error", duration_s=time.perf_counter() - t0, **error)
        print(
            f"{ERROR_MARKER} {json.dumps({'stage': stage, **error})}", file=sys.stdout, flush=True
        )
        raise
    except Exception as e:
        events.emit(
            stage,
            "error",
            duration_s=time.perf_counter() - t0,
            type=type(e).__name__,
            exit_code=1,
            message=f"{type(e).__name__}: {e}",
            hint=None,
        )
        raise
    passed = getattr(result, "passed", True)
    reason = getattr(result, "reason", "")
    skipped = getattr(result, "skipped", False)
    events.emit(
        stage,
        "end",
        duration_s=time.perf_counter() - t0,
        passed=passed,
        reason=reason,
        skipped=skipped,
    )
    return result
