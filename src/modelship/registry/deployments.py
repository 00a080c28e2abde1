"""The deployment record: one MLflow run per pipeline run, in experiment ``modelship-deployments``.

Params say what was deployed under which policy; each stage adds its verdict, figures and
reports. Runs are addressed by id, never through MLflow's process-global active run, because
stages run in separate processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from modelship.core.errors import RegistryError
from modelship.core.lifeline import LIFELINE_ENV, anchor_alive
from modelship.core.settings import Settings
from modelship.core.tags import (
    RUN_ERROR,
    RUN_HEARTBEAT,
    RUN_KFP,
    RUN_MODEL,
    RUN_OUTCOME,
    RUN_OWNER,
    RUN_VERSION,
)
from modelship.core.verdict import Verdict
from modelship.registry.client import ModelRef
from modelship.registry.experiments import ensure_experiment

EXPERIMENT = "modelship-deployments"
#: how often a working step renews the run's heartbeat
HEARTBEAT_S = 30.0
#: a run elsewhere with no heartbeat for this long is taken as interrupted. Generous: between two
#: steps on a cluster nothing beats while the next pod is scheduled and its image pulled.
STALE_S = 900.0


class DeploymentRun:
    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def open(
        cls,
        client: MlflowClient,
        settings: Settings,
        ref: ModelRef,
        *,
        digest: str,
        policy_hash: str,
        policy_json: str,
        kfp_run: str = "",
    ) -> DeploymentRun:
        tags = {RUN_MODEL: ref.name, RUN_VERSION: ref.version}
        if kfp_run:
            tags[RUN_KFP] = kfp_run
        if owner := os.environ.get(LIFELINE_ENV):  # set where the pipeline runs on this machine
            tags[RUN_OWNER] = f"{socket.gethostname()} {owner}"
        try:
            exp = ensure_experiment(client, settings, EXPERIMENT)
            run = client.create_run(exp, run_name=f"{ref.name}-v{ref.version}", tags=tags)
        except MlflowException as e:
            raise RegistryError(f"could not open the deployment run for {ref}: {e}") from e
        self = cls(client, run.info.run_id)
        for key, value in {
            "model": ref.name,
            "version": ref.version,
            "digest": digest,
            "policy_hash": policy_hash,
            "source_run": ref.run_id or "",
        }.items():
            client.log_param(self.run_id, key, value)
        self.log_text(policy_json, "policy.json")
        self.beat()
        return self

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_folder(self, path: Path, artifact_path: str) -> str:
        """Upload ``path``'s files under ``artifact_path``; where they lie in the artifact store
        (``s3://...`` where the tracking server does not proxy artifacts)."""
        self.client.log_artifacts(self.run_id, str(path), artifact_path)
        root = self.client.get_run(self.run_id).info.artifact_uri
        return f"{str(root).rstrip('/')}/{artifact_path}"

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_verdict(self, verdict: Verdict) -> None:
        stage = verdict.stage
        for key, value in verdict.figures.items():
            self.client.log_metric(self.run_id, f"{stage}.{key}", float(value))
        self.client.log_metric(self.run_id, f"{stage}.passed", 1.0 if verdict.passed else 0.0)
        self.client.log_metric(self.run_id, f"{stage}.duration_s", verdict.duration_s)
        self.client.set_tag(
            self.run_id, f"modelship.{stage}", "passed" if verdict.passed else "failed"
        )
        self.log_text(verdict.model_dump_json(indent=2), f"verdicts/{stage}.json")

    def finish(self, *, passed: bool, summary: dict[str, object]) -> None:
        self.log_text(json.dumps(summary, indent=2), "summary.json")
        self.client.set_tag(self.run_id, RUN_OUTCOME, str(summary.get("outcome", "")))
        status = RunStatus.to_string(RunStatus.FINISHED if passed else RunStatus.FAILED)
        self.client.set_terminated(self.run_id, status)

    def fail(self, error: str, *, outcome: str = "error", status: str = "FAILED") -> None:
        """Close a run whose pipeline crashed, with the error that ended it."""
        self.client.set_tag(self.run_id, RUN_OUTCOME, outcome)
        self.client.set_tag(self.run_id, RUN_ERROR, error[:4000])
        self.client.set_terminated(self.run_id, status)

    def beat(self) -> None:
        self.client.set_tag(self.run_id, RUN_HEARTBEAT, f"{time.time():.0f} {socket.gethostname()}")

    @contextlib.contextmanager
    def beating(self, every_s: float = HEARTBEAT_S) -> Iterator[None]:
        """Renew the heartbeat every ``every_s`` while the block runs (a missed beat, MLflow
        busy say, is only late: the next one tries again)."""
        self.beat()
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every_s):
                with contextlib.suppress(Exception):
                    self.beat()

        threading.Thread(target=loop, name="modelship-heartbeat", daemon=True).start()
        try:
            yield
        finally:
            stop.set()

    def carrier(self) -> LocalOwner | Silence | None:
        """Who carries this run while it says RUNNING, from one read of it: the process on this
        machine its owner tag names, or else the steps elsewhere its heartbeat speaks for. None
        once it ended, or where it records neither."""
        try:
            run = self.client.get_run(self.run_id)
        except MlflowException:
            return None
        if run.info.status != "RUNNING":
            return None
        host, _, process = run.data.tags.get(RUN_OWNER, "").partition(" ")
        if host == socket.gethostname():
            return LocalOwner(process.partition(":")[0], anchor_alive(process)) if process else None
        at, _, sender = run.data.tags.get(RUN_HEARTBEAT, "").partition(" ")
        try:
            return Silence(max(0.0, time.time() - float(at)), sender or "an unknown host")
        except ValueError:  # it never beat
            return None

    def interrupted(self) -> str | None:
        """Why this run is over though it says RUNNING (its process here was killed, the machine
        restarted, or no step elsewhere has beaten for ``STALE_S``), or None."""
        found = self.carrier()
        return None if found is None else found.over


@dataclass(frozen=True)
class LocalOwner:
    """The process on this machine that runs a deployment (a cluster's runs have none)."""

    pid: str
    alive: bool

    @property
    def over(self) -> str | None:
        """Why the run is over (its process is gone), or None while it runs."""
        if self.alive:
            return None
        return f"the deploy that ran it (pid {self.pid} on {socket.gethostname()}) is gone"


@dataclass(frozen=True)
class Silence:
    """A deployment whose steps run elsewhere: seconds since its last heartbeat, and its host."""

    seconds: float
    host: str

    @property
    def over(self) -> str | None:
        """Why the run is over (no step has reported for ``STALE_S``), or None while fresh."""
        if self.seconds < STALE_S:
            return None
        return (f"no step of it has reported for {self.seconds / 60:.0f} min "
                f"(the last from {self.host})")  # fmt: skip


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"modelship-{prefix}-"))
