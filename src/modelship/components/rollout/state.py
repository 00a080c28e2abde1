"""What a rollout is doing, as a record that outlives the process that drives it.

The status holds everything the controller needs to carry on after a restart: the phase, the
step and when it started, the weights applied, failed and errored analyses, and the hash of
the policy it runs. It is written whole to a file (temporary name, then rename) after every
change, so a reader never sees half of one and a killed controller resumes where it was.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelship.core.files import write_atomic
from modelship.policies.schema import Rollout


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

    def take_command(self) -> Command | None:
        try:
            text = self.command_path.read_text().strip()
        except FileNotFoundError:
            return None
        self.command_path.unlink(missing_ok=True)
        if text in ("promote", "promote_full", "abort"):
            return text  # type: ignore[return-value]
        return None

    def save_baseline(self, snapshot: dict[str, Any]) -> None:
        write_atomic(self.baseline_path, json.dumps(snapshot))

    def load_baseline(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.baseline_path.read_text())
            return data
        except (FileNotFoundError, ValueError):
            return None
