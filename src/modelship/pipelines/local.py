"""Run a pipeline on this machine with ``kfp.local`` and its ``SubprocessRunner``.

The same ``@dsl.pipeline`` that the Kubeflow Pipelines UI runs. Steps run as subprocesses of
this interpreter (no container, no venv per step), inherit its environment and so reach the
same MLflow store. KFP's own chatter goes to a log file; progress comes through events.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelship.core.errors import InputError, ModelshipError, StageError
from modelship.core.events import EVENTS_ENV, read_all
from modelship.core.lifeline import LIFELINE_ENV, anchor
from modelship.core.settings import Settings

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class LocalRun:
    events: Path
    log: Path

    @classmethod
    def new(cls, settings: Settings, model: str) -> LocalRun:
        folder = settings.home / "runs"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        return cls(folder / f"{model}-{stamp}.events.jsonl", folder / f"{model}-{stamp}.log")


def _error_from_events(events: Path, log: Path) -> ModelshipError:
    """The error a failed step reported, as the exception the CLI maps to an exit code."""
    for event in reversed(list(read_all(events))):
        if event.get("status") == "error":
            message = f"{event['stage']}: {event.get('message')}"
            hint = event.get("hint")
            if event.get("exit_code") == 2:
                return InputError(message, hint=hint)
            error = StageError(message, hint=hint or f"details in {log}")
            error.exit_code = int(event.get("exit_code") or 1)
            return error
    return StageError("the pipeline failed before any step reported why", hint=f"see {log}")


def _close_orphan_run(settings: Settings, events: Path, error: ModelshipError) -> None:
    """A step that died hard may leave the deployment run open: close it as failed."""
    run_ids = [e["run_id"] for e in read_all(events) if e.get("run_id")]
    if not run_ids:
        return
    from mlflow import MlflowClient

    from modelship.registry.deployments import DeploymentRun

    client = MlflowClient(settings.tracking_uri)
    if client.get_run(run_ids[-1]).info.status == "RUNNING":
        DeploymentRun(client, run_ids[-1]).fail(str(error))


def run_deploy(
    settings: Settings,
    local_run: LocalRun,
    *,
    model: str,
    version: str | None = None,
    alias: str | None = None,
    policy_yaml: str = "",
) -> dict[str, Any]:
    """Run the deploy pipeline to the end; the summary, or the error a step raised.

    ``policy_yaml`` is the effective policy as text, as ``modelship submit`` sends it to a
    cluster: the same parameter, so a local run and a cluster run read the policy the same way.
    """
    from kfp import local

    from modelship.pipelines.deploy import deploy_pipeline

    os.environ.update(settings.child_env())
    os.environ[EVENTS_ENV] = str(local_run.events)
    os.environ[LIFELINE_ENV] = anchor()  # the steps end with this process, however it ends
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(settings.home / "pipeline-root"),
    )
    with (
        local_run.log.open("w") as log,
        contextlib.redirect_stdout(log),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # kfp warns that a local run ignores base images
        try:
            task = deploy_pipeline(
                model_name=model,
                version=version or "",
                alias=alias or "",
                policy_yaml=policy_yaml,
            )
        except RuntimeError as e:
            print(_ANSI.sub("", str(e)), file=log)
            error = _error_from_events(local_run.events, local_run.log)
            _close_orphan_run(settings, local_run.events, error)
            raise error from None
    summary_artifact = task.output
    summary: dict[str, Any] = json.loads(Path(summary_artifact.path).read_text())
    return summary
