"""What to do after a window: ``decide(status, window, policy, has_previous, now)``. Pure.

Drift counts only in a row (``consecutive_windows``): one noisy window never acts. An
inconclusive window neither breaks nor extends a run of breaches; an error alerts and never
rolls back (an unreadable reference says nothing about the model). After acting, the cooldown
keeps the monitor from acting again on the same trend.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelship.components.monitor.state import Action, MonitorStatus, WindowOutcome, WindowRecord
from modelship.policies.schema import Monitor


@dataclass(frozen=True)
class MonitorDecision:
    action: Action
    status: MonitorStatus
    reason: str


def decide(
    status: MonitorStatus, window: WindowRecord, policy: Monitor, has_previous: bool, now: float
) -> MonitorDecision:
    windows = [*status.windows, window]
    base = status.model_copy(update={"windows": windows, "cursor_us": max(status.cursor_us,
                                                                          window.end_us)})  # fmt: skip

    def result(action: Action, reason: str, **changes: object) -> MonitorDecision:
        event = f"{now:.3f} v{window.version} {window.outcome}: {reason}"
        new = base.model_copy(update={**changes, "events": [*status.events, event]})
        return MonitorDecision(action, new, reason)

    if window.outcome is WindowOutcome.ERROR:
        return result(Action.ALERT, f"the window could not be judged: {window.reason}")
    if window.outcome is WindowOutcome.INCONCLUSIVE:
        return result(Action.NONE, window.reason)
    if window.outcome is WindowOutcome.STABLE:
        return result(Action.NONE, window.reason, breaches=0)
    breaches = status.breaches + 1
    if breaches < policy.consecutive_windows:
        return result(Action.NONE, f"breach {breaches} of {policy.consecutive_windows} in a row: "
                                   f"{window.reason}", breaches=breaches)  # fmt: skip
    cooling = status.last_action_at is not None and now - status.last_action_at < policy.cooldown_s
    if cooling:
        return result(Action.NONE, f"drift again within cooldown_s ({policy.cooldown_s:g} s) of "
                                   f"the last action: {window.reason}", breaches=breaches)  # fmt: skip
    why = f"{breaches} windows in a row drifted: {window.reason}"
    if policy.action == "none":
        return result(Action.NONE, f"{why} (monitor.action: none)", breaches=breaches)
    if policy.action == "alert" or not has_previous:
        extra = "" if policy.action == "alert" else " (no previous champion to roll back to)"
        return result(Action.ALERT, why + extra, breaches=0, last_action_at=now)
    return result(Action.ROLLBACK, why, breaches=0, last_action_at=now)
