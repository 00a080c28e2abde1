"""The contract between stages: every gate returns a typed verdict that the next stage demands.

A verdict lists every check with what was measured, the bar it was held to and a reason a person
can read. It is saved as a KFP output artifact and in the deployment's MLflow run.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from modelship.core.errors import GateRejected

Measured = float | int | str | bool | None


class ModelState(StrEnum):
    """The ``modelship.state`` tag on a model version."""

    VALIDATED = "validated"
    OPTIMIZED = "optimized"
    PACKAGED = "packaged"
    LOAD_TESTED = "load_tested"
    CANARY = "canary"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    #: the deploy that carried it was killed between or inside stages (found by the next
    #: ``modelship status`` or deploy, since a killed process records nothing)
    INTERRUPTED = "interrupted"

    @property
    def is_terminal(self) -> bool:
        return self in (ModelState.REJECTED, ModelState.ROLLED_BACK)


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    passed: bool
    measured: Measured = None
    threshold: Measured = None
    reason: str = ""
    #: which family of checks this belongs to (data, model, metric, ...)
    kind: str = ""
    #: a check that could not be evaluated (no champion, no data) and is not held against the model
    skipped: bool = False
    #: whether failing it fails the stage; a variant that fails equivalence is only dropped
    blocking: bool = True


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str
    passed: bool
    reason: str
    checks: list[Check] = []
    #: headline figures of the stage (metric values, timings), logged as MLflow metrics
    figures: dict[str, float] = {}
    duration_s: float = 0.0
    #: the stage did not run because an earlier gate did not pass
    skipped: bool = False

    @classmethod
    def from_checks(
        cls,
        stage: str,
        checks: list[Check],
        *,
        figures: dict[str, float] | None = None,
        duration_s: float = 0.0,
    ) -> Verdict:
        failed = [c for c in checks if not c.passed and c.blocking]
        if failed:
            reason = "; ".join(f"{c.name}: {c.reason}" for c in failed)
        elif len(checks) == 1:
            reason = checks[0].reason or "passed"
        else:
            reason = f"all {len(checks)} checks passed"
        return cls(
            stage=stage,
            passed=not failed,
            reason=reason,
            checks=checks,
            figures=figures or {},
            duration_s=round(duration_s, 3),
        )

    @classmethod
    def not_run(cls, stage: str, because: Verdict) -> Verdict:
        """The verdict of a stage that did not run because ``because`` did not pass."""
        return cls(
            stage=stage, passed=False, skipped=True,
            reason=f"not run: {because.stage} did not pass",
        )  # fmt: skip

    def require_passed(self) -> Verdict:
        """What a later stage calls on its input verdict: no passing verdict, no work."""
        if not self.passed:
            raise GateRejected(
                f"stage {self.stage!r} did not pass: {self.reason}",
                hint="a later stage runs only after a passing verdict from the one before",
            )
        return self

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Verdict:
        return cls.model_validate_json(Path(path).read_text())

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = json.loads(self.model_dump_json())
        return summary
