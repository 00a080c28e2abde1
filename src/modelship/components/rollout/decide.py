"""The rollout's decisions: ``decide(status, observations, steps, policy, now) -> Decision``.

Pure: no clock, no I/O. The controller gathers observations, calls this, applies the one
action it returns and saves the new status; tests drive it tick by tick with hand-built values.
Recomputing from the saved status each tick is what makes a restarted controller resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from modelship.components.rollout.state import (
    AnalysisOutcome,
    AnalysisRecord,
    Command,
    Phase,
    PlannedStep,
    RolloutStatus,
)
from modelship.policies.schema import Rollout

#: wait before re-running an analysis that errored
ERROR_RETRY_S = 2.0


class Action(StrEnum):
    #: apply the status's weights for its step (and take the metrics baseline)
    SET_STEP = "set_step"
    WAIT = "wait"
    #: measure the step; call decide again with the result
    ANALYZE = "analyze"
    PROMOTE = "promote"
    ABORT = "abort"
    #: the rollout is over
    DONE = "done"


@dataclass(frozen=True)
class Observations:
    challenger_healthy: bool = True
    command: Command | None = None
    analysis: AnalysisRecord | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    status: RolloutStatus
    wait_s: float = 0.0


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S UTC")


def _moved(
    status: RolloutStatus, now: float, weight: int, mirror: float
) -> list[tuple[float, int, float]]:
    return [*status.traffic, (now, weight, mirror)]


def _with(
    status: RolloutStatus, now: float, event: str | None = None, **changes: object
) -> RolloutStatus:
    events = [*status.events, f"{now:.3f} {event}"] if event else status.events
    return status.model_copy(update={**changes, "updated_at": now, "events": events})


def _start_step(
    status: RolloutStatus, steps: list[PlannedStep], index: int, now: float
) -> Decision:
    step = steps[index]
    paused = step.pause_s is None
    what = f"step {index + 1}/{len(steps)}: challenger {step.weight}%"
    if step.mirror:
        what += f", mirror {step.mirror:.0%}"
    if paused:
        what += f", paused until `modelship rollout promote {status.model}`"
    new = _with(status, now, what, step=index, step_started_at=now, weight=step.weight,
                mirror=step.mirror, phase=Phase.PAUSED if paused else Phase.PROGRESSING,
                paused_at=now if paused else None, reason=what,
                traffic=_moved(status, now, step.weight, step.mirror))  # fmt: skip
    return Decision(Action.SET_STEP, new)


def _advance(status: RolloutStatus, steps: list[PlannedStep], now: float) -> Decision:
    if status.step + 1 < len(steps):
        return _start_step(status, steps, status.step + 1, now)
    return _promote(status, now, "every step passed")


def _promote(status: RolloutStatus, now: float, why: str) -> Decision:
    reason = f"promoted v{status.challenger}: {why}"
    new = _with(status, now, reason, phase=Phase.PROMOTED, weight=100, mirror=0.0, reason=reason,
                paused_at=None, traffic=_moved(status, now, 100, 0.0))  # fmt: skip
    return Decision(Action.PROMOTE, new)


def _abort(status: RolloutStatus, now: float, why: str) -> Decision:
    reason = f"aborted v{status.challenger}: {why}"
    new = _with(status, now, reason, phase=Phase.ABORTED, weight=0, mirror=0.0, reason=reason,
                paused_at=None, traffic=_moved(status, now, 0, 0.0))  # fmt: skip
    return Decision(Action.ABORT, new)


def _judge(
    status: RolloutStatus, steps: list[PlannedStep], policy: Rollout, record: AnalysisRecord,
    now: float,
) -> Decision:  # fmt: skip
    status = status.model_copy(update={"analyses": [*status.analyses, record]})
    note = f"analysis of step {status.step + 1}: {record.outcome}: {record.reason}"
    if record.outcome is AnalysisOutcome.SUCCESSFUL:
        status = _with(status, now, note, consecutive_errors=0)
        return _advance(status, steps, now)
    if record.outcome is AnalysisOutcome.FAILED:
        failed = status.failed + 1
        status = _with(status, now, note, failed=failed, consecutive_errors=0)
        if failed > policy.failure_limit:
            return _abort(status, now, f"analysis failed ({record.reason})")
        # measure the step again over a fresh window
        return _start_step(status, steps, status.step, now)
    if record.outcome is AnalysisOutcome.ERROR:
        errors = status.consecutive_errors + 1
        status = _with(status, now, note, consecutive_errors=errors)
        if errors >= policy.consecutive_error_limit:
            return _abort(status, now, f"analysis could not run {errors} times in a row "
                                       f"({record.reason})")  # fmt: skip
        return Decision(Action.WAIT, status, ERROR_RETRY_S)
    reason = (
        f"inconclusive at step {status.step + 1} ({record.reason}); waits for a person since "
        f"{_clock(now)}: `modelship rollout promote {status.model}` goes on, `modelship rollout "
        f"abort {status.model}` stops it"
    )
    if (deadline := policy.progress_deadline_s) is not None:
        reason += (
            f"; aborts at {_clock(now + deadline)} ({deadline:g} s, rollout.progress_deadline_s)"
        )
    new = _with(status, now, note, phase=Phase.PAUSED, paused_at=now, reason=reason)
    return Decision(Action.WAIT, new)


def _wait_for_a_person(status: RolloutStatus, policy: Rollout, now: float) -> Decision:
    """Paused: wait for a command, but no longer than the progress deadline."""
    deadline = policy.progress_deadline_s
    if deadline is None:
        return Decision(Action.WAIT, status, policy.tick_s)
    # a status saved before paused_at existed: count from its last change
    since = status.paused_at if status.paused_at is not None else status.updated_at
    waited = now - since
    if waited >= deadline:
        return _abort(
            status, now, f"no progress for {waited:.0f} s at step {status.step + 1}, past "
            f"rollout.progress_deadline_s ({deadline:g} s): {status.reason}",
        )  # fmt: skip
    return Decision(Action.WAIT, status, min(policy.tick_s, deadline - waited))


def decide(
    status: RolloutStatus,
    observations: Observations,
    steps: list[PlannedStep],
    policy: Rollout,
    now: float,
) -> Decision:
    if status.phase.is_terminal:
        return Decision(Action.DONE, status)
    command = observations.command
    if command == "abort":
        return _abort(status, now, "aborted by hand (modelship rollout abort)")
    if not observations.challenger_healthy:
        return _abort(status, now, "the challenger failed its health checks and was ejected")
    if command == "promote_full":
        return _promote(status, now, "promoted by hand, remaining steps skipped")
    started = status.step_started_at
    if started is None:
        return _start_step(status, steps, status.step, now)
    step = steps[status.step]
    if status.phase is Phase.PAUSED:
        if command == "promote":
            status = _with(status, now, f"step {status.step + 1} promoted by hand")
            return _advance(status, steps, now)
        return _wait_for_a_person(status, policy, now)
    elapsed = now - started
    if step.pause_s is not None and elapsed < step.pause_s:
        return Decision(Action.WAIT, status, step.pause_s - elapsed)
    if not step.analysis:
        return _advance(status, steps, now)
    if observations.analysis is None:
        return Decision(Action.ANALYZE, status)
    return _judge(status, steps, policy, observations.analysis, now)
