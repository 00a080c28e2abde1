"""What a rollout is doing, as a record that outlives the process that drives it.

The status holds everything the controller needs to carry on after a restart: the phase, the
step and when it started, the weights applied, failed and errored analyses, and the hash of
the policy it runs. It is written whole after every change, so a reader never sees half of one
and a killed controller resumes where it was: to a file (temporary name, then rename) on the
embedded store, and to MLflow (:mod:`modelship.registry.shared_state`) when modelship works
against a tracking server, so that a controller in a pipeline pod and a person's
``modelship rollout promote|abort`` on a laptop reach the same rollout.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from modelship.core.files import write_atomic
from modelship.core.settings import Settings
from modelship.policies.schema import Rollout
from modelship.registry.shared_state import Lease, SharedState, state_and_lease


class Phase(StrEnum):
    PROGRESSING = "progressing"
    #: waiting for a person: a step with no pause length, or an inconclusive analysis
    PAUSED = "paused"
    PROMOTED = "promoted"
    ABORTED = "aborted"

    @property
    def is_terminal(self) -> bool:
        return self in (Phase.PROMOTED, Phase.ABORTED)


class AnalysisOutcome(StrEnum):
    SUCCESSFUL = "successful"
    #: the challenger measurably worse: counts against failure_limit
    FAILED = "failed"
    #: the analysis could not run (metrics or logs unreadable): counts against
    #: consecutive_error_limit, never as a failure of the model
    ERROR = "error"
    #: too little traffic to judge: the rollout waits for a person
    INCONCLUSIVE = "inconclusive"


class AnalysisRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    step: int
    outcome: AnalysisOutcome
    reason: str
    at: float
    figures: dict[str, Any] = {}


class PlannedStep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: int
    mirror: float = 0.0
    #: None: paused until promoted by hand
    pause_s: float | None
    analysis: bool = True


def plan(rollout: Rollout) -> list[PlannedStep]:
    """The steps a strategy takes. Blue-green: mirror and analyse, then all traffic at once."""
    if rollout.strategy == "blue_green":
        bg = rollout.blue_green
        return [
            PlannedStep(weight=0, mirror=bg.mirror_share, pause_s=bg.analysis_s, analysis=True),
            PlannedStep(weight=100, pause_s=0.0, analysis=False),
        ]
    return [
        PlannedStep(
            weight=s.weight,
            mirror=rollout.mirror_share if s.weight < 100 else 0.0,
            pause_s=s.pause_s,
            analysis=s.analysis,
        )
        for s in rollout.steps
    ]


Command = Literal["promote", "promote_full", "abort"]


class RolloutStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    champion: str | None
    challenger: str
    strategy: str
    policy_hash: str
    phase: Phase = Phase.PROGRESSING
    step: int = 0
    #: when the current step's weights were applied; None: not yet (apply them next)
    step_started_at: float | None = None
    weight: int = 0
    mirror: float = 0.0
    #: since when the rollout waits for a person (paused or inconclusive); None: it does not
    paused_at: float | None = None
    failed: int = 0
    consecutive_errors: int = 0
    analyses: list[AnalysisRecord] = []
    reason: str = ""
    started_at: float
    updated_at: float
    #: (time, challenger weight, mirror share) each time the weights changed, for the report
    traffic: list[tuple[float, int, float]] = []
    #: human-readable history, oldest first: what a person reads in `modelship rollout status`
    events: list[str] = Field(default_factory=list)


_COMMANDS = ("promote", "promote_full", "abort")


class RolloutStore(Protocol):
    """Where one model's rollout status, baseline and commands are kept."""

    def load(self) -> RolloutStatus | None: ...
    def save(self, status: RolloutStatus) -> None: ...
    def send(self, command: Command) -> None: ...
    def command_pending(self) -> bool: ...
    def take_command(self) -> Command | None: ...
    def save_baseline(self, snapshot: dict[str, Any]) -> None: ...
    def load_baseline(self) -> dict[str, Any] | None: ...
    def acquire(self) -> None:
        """Become the one controller of this rollout (raises ``LeaseHeld`` otherwise)."""

    def release(self) -> None: ...


def rollout_store(settings: Settings, model: str) -> RolloutStore:
    """Files under ``$MODELSHIP_HOME/rollouts`` on the embedded store, else MLflow."""
    if settings.embedded:
        return StatusStore(settings.home / "rollouts", model)
    return MlflowStatusStore(*state_and_lease(settings, model, "rollout"))


class MlflowStatusStore:
    """The status and baseline as documents, a command as a tag, and a lease (MLflow)."""

    COMMAND_TAG = "modelship.rollout.command"

    def __init__(self, state: SharedState, lease: Lease) -> None:
        self.state, self.lease = state, lease
        self._saved = ""

    def load(self) -> RolloutStatus | None:
        text = self.state.read("status.json")
        return None if text is None else RolloutStatus.model_validate_json(text)

    def save(self, status: RolloutStatus) -> None:
        text = status.model_dump_json(indent=2)
        if text != self._saved:  # a tick that changed nothing writes nothing
            self.state.write("status.json", text)
            self._saved = text
        if self.lease.renewed_at:
            self.lease.renew_if_due()

    def send(self, command: Command) -> None:
        self.state.set_tag(self.COMMAND_TAG, command)

    def command_pending(self) -> bool:
        return self.state.tag(self.COMMAND_TAG) is not None

    def take_command(self) -> Command | None:
        text = self.state.tag(self.COMMAND_TAG)
        if text is None:
            return None
        self.state.delete_tag(self.COMMAND_TAG)
        return text if text in _COMMANDS else None  # type: ignore[return-value]

    def save_baseline(self, snapshot: dict[str, Any]) -> None:
        self.state.write("baseline.json", json.dumps(snapshot))

    def load_baseline(self) -> dict[str, Any] | None:
        text = self.state.read("baseline.json")
        try:
            return None if text is None else dict(json.loads(text))
        except ValueError:
            return None

    def acquire(self) -> None:
        self.lease.acquire()

    def release(self) -> None:
        self.lease.release()


class StatusStore:
    """One rollout's status file and its command file, under ``$MODELSHIP_HOME/rollouts``.

    Commands (promote, abort) come from other processes through their own file, read and
    removed by the controller, so a person's command and the controller's writes never race.
    """

    def __init__(self, folder: Path, model: str) -> None:
        self.folder = folder
        self.path = folder / f"{model}.json"
        self.command_path = folder / f"{model}.command"
        self.baseline_path = folder / f"{model}.baseline.json"

    def load(self) -> RolloutStatus | None:
        try:
            return RolloutStatus.model_validate_json(self.path.read_text())
        except FileNotFoundError:
            return None

    def save(self, status: RolloutStatus) -> None:
        write_atomic(self.path, status.model_dump_json(indent=2))

    def send(self, command: Command) -> None:
        write_atomic(self.command_path, command)

    def command_pending(self) -> bool:
        return self.command_path.exists()

    def acquire(self) -> None:
        """One machine, one gateway port: nothing more to hold."""

    def release(self) -> None:
        pass

    def take_command(self) -> Command | None:
        try:
            text = self.command_path.read_text().strip()
        except FileNotFoundError:
            return None
        self.command_path.unlink(missing_ok=True)
        return text if text in _COMMANDS else None  # type: ignore[return-value]

    def save_baseline(self, snapshot: dict[str, Any]) -> None:
        write_atomic(self.baseline_path, json.dumps(snapshot))

    def load_baseline(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.baseline_path.read_text())
            return data
        except (FileNotFoundError, ValueError):
            return None
