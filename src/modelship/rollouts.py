"""``modelship rollout status|promote|abort``: read a rollout's saved status, send it commands."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from mlflow import MlflowClient
from rich.console import Group
from rich.table import Table
from rich.text import Text

from modelship.components.rollout.state import (
    Command,
    Phase,
    RolloutStatus,
    RolloutStore,
    rollout_store,
)
from modelship.core.errors import InputError
from modelship.core.settings import Settings


def store(settings: Settings, model: str) -> RolloutStore:
    return rollout_store(settings, model)


def _where(settings: Settings) -> str:
    return str(settings.home) if settings.embedded else settings.tracking_uri


def load_status(settings: Settings, model: str, files: RolloutStore | None = None) -> RolloutStatus:
    status = (files or store(settings, model)).load()
    if status is None:
        raise InputError(
            f"no rollout of {model!r} was ever started under {_where(settings)}",
            hint=f"`modelship deploy {model}` starts one once a version passes its gates",
        )
    return status


def send(settings: Settings, model: str, command: Command, wait_s: float) -> str:
    """Hand ``command`` to the running controller (here, or in a pod: the same MLflow); what it
    did, once it took it."""
    files = store(settings, model)
    status = load_status(settings, model, files)
    if status.phase.is_terminal:
        raise InputError(
            f"the rollout of {model} v{status.challenger} is over ({status.phase}): "
            f"{status.reason}",
            hint="a new rollout starts with the next `modelship deploy`",
        )
    files.send(command)
    from modelship.registry.audit import record

    # the settings' store, named: a bare MlflowClient() here (these commands never call
    # Settings.prepare) would fall back to MLflow's default, ./mlflow.db wherever the person
    # stands, and the entry would be missing from the trail `modelship audit` reads
    client = MlflowClient(settings.tracking_uri, registry_uri=settings.registry_uri)
    record(client, model, f"{command} requested", status.challenger, phase=str(status.phase))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.1 if settings.embedded else 0.5)
        if files.command_pending():
            continue  # not taken yet
        # taken: the controller saves the status once it has applied the command
        now = load_status(settings, model, files)
        if now.updated_at > status.updated_at:
            return f"{command}: done · {now.phase} · {now.reason}"
    return (
        f"{command}: sent, not yet taken: the controller reads it on its next tick "
        f"(is `modelship deploy {model}`, or its pipeline run, still running?)"
    )


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%H:%M:%S")


def render_rollout(status: RolloutStatus) -> Group:
    color = {Phase.PROMOTED: "green", Phase.ABORTED: "red", Phase.PAUSED: "yellow"}.get(
        status.phase, "cyan"
    )
    head = Text.assemble(
        (f"{status.model} v{status.challenger}", "bold"),
        f" against champion v{status.champion} · {status.strategy} · ",
        (str(status.phase), f"bold {color}"),
        f" · step {status.step + 1} · challenger {status.weight}%",
        f", mirror {status.mirror:.0%}" if status.mirror else "",
    )
    analyses = Table("step", "outcome", "reason", title="analyses", title_justify="left")
    for a in status.analyses:
        analyses.add_row(str(a.step + 1), str(a.outcome), a.reason)
    waiting = Text()
    if status.phase is Phase.PAUSED and status.paused_at is not None:
        waited = time.time() - status.paused_at
        waiting = Text.assemble(
            (f"waits for a person since {_when(status.paused_at)} ({waited:.0f} s): ", "yellow"),
            f"`modelship rollout promote {status.model}` goes on, "
            f"`modelship rollout abort {status.model}` stops it",
        )
    history = Text("\n".join(
        f"{_when(float(e.split(' ', 1)[0]))}  {e.split(' ', 1)[1]}" for e in status.events[-12:]
    ))  # fmt: skip
    return Group(head, Text(status.reason, style="dim"), waiting, analyses, history)
