"""One stage contract: ``run(ctx, inputs) -> Verdict``, and one runner for what every stage needs.

As TFX's executors share ``Do(input_dict, output_dict, exec_properties)``, every gate here is a
:class:`Stage`: a name, the model state it earns, and a ``run`` over a :class:`StageContext` and
its own typed inputs. :func:`run_stage` does the rest once: the not-run verdict when the previous
gate did not pass, the digest check before a model's files are opened, the timing, the
``modelship.state`` tag, the verdict in the deployment's MLflow run, and closing that run when the
stage fails with an error. The KFP components (``modelship.pipelines``) and the tests call it
the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from modelship.core.errors import ModelshipError
from modelship.core.events import NO_EVENTS, EventSink
from modelship.core.settings import Settings
from modelship.core.verdict import ModelState, Verdict
from modelship.policies.schema import Policy
from modelship.registry.client import ModelRef, Registry
from modelship.registry.deployments import DeploymentRun
from modelship.registry.digest import verify

I = TypeVar("I")  # noqa: E741  (the stage's inputs)


@dataclass(frozen=True)
class StageContext:
    """What every stage is given: the version, its policy, and where to read and write."""

    ref: ModelRef
    policy: Policy
    registry: Registry
    #: the deployment's MLflow run; None where a stage runs outside a deployment (tests)
    deployment: DeploymentRun | None
    #: the stage's own scratch folder (reports before they are logged, server logs)
    workdir: Path
    settings: Settings
    events: EventSink = NO_EVENTS

    @property
    def env(self) -> dict[str, str]:
        """The environment for the processes a stage starts (probes, servers)."""
        return self.settings.child_env()


@dataclass(frozen=True)
class ModelInputs:
    """The inputs of a stage that opens the model's files: checked against the digest first."""

    model_dir: Path
    digest: str


@dataclass(frozen=True)
class PackagedInputs:
    """The inputs of a stage that serves the packaged model: the package step's output."""

    packaged: Path


@dataclass(frozen=True)
class Stage(Generic[I]):
    name: str
    #: the version's state when the stage passed; None where the stage moves states itself
    #: (the rollout: canary, promoted, rolled back)
    passed_state: ModelState | None
    run: Callable[[StageContext, I], Verdict]


def run_stage(
    stage: Stage[I], ctx: StageContext, inputs: I, previous: Verdict | None = None
) -> Verdict:
    """Run ``stage`` after ``previous`` (the gate before it) passed; its verdict, recorded."""
    if previous is not None and not previous.passed:
        return Verdict.not_run(stage.name, previous)
    t0 = time.perf_counter()
    try:
        if isinstance(inputs, ModelInputs):  # never open what was not checked
            verify(inputs.model_dir, inputs.digest, what=str(ctx.ref))
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        verdict = stage.run(ctx, inputs)
    except ModelshipError as e:
        if ctx.deployment is not None:
            ctx.deployment.fail(str(e))
        raise
    verdict = verdict.model_copy(update={"duration_s": round(time.perf_counter() - t0, 3)})
    # a stage the policy turned off (every check skipped) leaves the version's state as it was
    turned_off = all(c.skipped for c in verdict.checks)
    if stage.passed_state is not None and not turned_off:
        state = stage.passed_state if verdict.passed else ModelState.REJECTED
        ctx.registry.set_state(ctx.ref, state, verdict.reason)
    if ctx.deployment is not None:
        ctx.deployment.log_verdict(verdict)
    return verdict
