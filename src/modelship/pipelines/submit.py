"""Start the compiled pipelines on a Kubeflow Pipelines endpoint, with the same parameters that
`modelship deploy` and `modelship monitor` take locally.

The policy travels as the run's ``policy_yaml`` parameter (the whole effective policy, read
here), never as a path on the submitting machine. A deployment is followed to its end by
default: KFP says whether the run finished, MLflow's deployment record (found by the KFP run id
that the resolve step tags it with) says whether the model passed.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelship.components.targets.rbac import SERVICE_ACCOUNT
from modelship.core.errors import InputError, StageError
from modelship.core.settings import Settings
from modelship.core.tags import RUN_ERROR, RUN_KFP, RUN_OUTCOME
from modelship.pipelines.compile import PIPELINE_DIR
from modelship.policies.loader import load_policy, policy_yaml
from modelship.policies.schema import Policy, cluster_log_problem
from modelship.registry.deployments import EXPERIMENT as DEPLOYMENTS

EXPERIMENT = "modelship"
#: KFP run states after which nothing more happens
FINAL_STATES = {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED", "PAUSED"}


@dataclass(frozen=True)
class SubmittedRun:
    run_id: str
    host: str
    experiment: str

    @property
    def url(self) -> str:
        return f"{self.host.rstrip('/')}/#/runs/details/{self.run_id}"


@dataclass(frozen=True)
class RecurringRun:
    recurring_run_id: str
    host: str
    every_s: int

    @property
    def url(self) -> str:
        return f"{self.host.rstrip('/')}/#/recurringrun/details/{self.recurring_run_id}"


@dataclass(frozen=True)
class FinishedRun:
    """How a followed run ended: KFP's state and, where MLflow has it, the deployment's record."""

    run: SubmittedRun
    state: str
    outcome: str | None
    summary: dict[str, Any]

    @property
    def exit_code(self) -> int:
        """0 promoted (every gate passed), 3 rejected by a gate, 1 anything else."""
        if self.outcome == "passed" and self.state == "SUCCEEDED":
            return 0
        if self.outcome == "rejected":
            return 3
        return 1


def cluster_policy(model: str, policy_file: Path | None, policy_dir: Path | None) -> Policy:
    """The effective policy a cluster run gets, refused when it could only work on one machine."""
    policy = load_policy(model, policy_file, policy_dir=policy_dir).policy
    if policy.rollout.target == "local":
        raise InputError(
            f"{model}'s policy rolls out with rollout.target: local, which serves on the machine "
            "that runs the deploy: in a Kubeflow Pipelines pod no traffic would ever reach it",
            hint="set rollout.target: kserve or seldon and rollout.kubernetes in the policy "
            "(--policy FILE), or deploy on the serving machine with `modelship deploy`",
        )
    if (problem := cluster_log_problem(policy)) is not None:
        raise InputError(f"{model}'s policy: {problem}", hint="edit the policy (--policy FILE)")
    return policy


@contextlib.contextmanager
def _kfp(host: str, what: str) -> Iterator[None]:
    """kfp prints links to stdout (which belongs to --json); its errors become StageErrors."""
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2+"
            yield
    except (InputError, StageError):
        raise
    except Exception as e:  # kfp raises ApiException, urllib3 and connection errors
        raise StageError(
            f"could not {what} on {host}: {type(e).__name__}: {e}",
            hint="check the KFP host and, on a multi-user cluster, the token (KFP_TOKEN)",
        ) from e


def _package(name: str) -> Path:
    package = PIPELINE_DIR / f"{name}.yaml"
    if not package.is_file():
        raise InputError(f"{package} is missing", hint="run `modelship compile` first")
    return package


def submit(
    host: str,
    model: str,
    *,
    version: str | None = None,
    alias: str | None = None,
    policy_file: Path | None = None,
    policy_dir: Path | None = None,
    experiment: str = EXPERIMENT,
    token: str | None = None,
    service_account: str | None = SERVICE_ACCOUNT,
) -> SubmittedRun:
    """Create a run of ``deploy.yaml`` on ``host`` with caching off; the run's id and link."""
    import kfp

    policy = cluster_policy(model, policy_file, policy_dir)
    arguments = {
        "model_name": model,
        "version": version or "",
        "alias": alias or "",
        "policy_yaml": policy_yaml(policy),
    }
    with _kfp(host, "start the deploy pipeline"):
        client = kfp.Client(host=host, existing_token=token)
        result = client.create_run_from_pipeline_package(
            str(_package("deploy")),
            arguments=arguments,
            run_name=f"deploy-{model}-{version or alias or 'latest'}-{time.strftime('%Y%m%d-%H%M%S')}",
            experiment_name=experiment,
            enable_caching=False,
            service_account=service_account or None,
        )
    return SubmittedRun(str(result.run_id), host, experiment)


def follow(
    run: SubmittedRun,
    settings: Settings,
    *,
    token: str | None = None,
    timeout_s: float = 6 * 3600,
    poll_s: float = 10.0,
    say: Callable[[str], None] = print,
) -> FinishedRun:
    """Wait for ``run`` to end; its state and the deployment's outcome from MLflow."""
    import kfp

    deadline = time.monotonic() + timeout_s
    last = ""
    with _kfp(run.host, "follow the run"):
        client = kfp.Client(host=run.host, existing_token=token)
        while True:
            state = str(client.get_run(run.run_id).state or "PENDING").upper()
            if state != last:
                say(f"{run.run_id}: {state.lower()}")
                last = state
            if state in FINAL_STATES:
                break
            if time.monotonic() > deadline:
                raise StageError(
                    f"run {run.run_id} is still {state.lower()} after {timeout_s:.0f} s",
                    hint=f"it goes on without this command: follow it at {run.url}",
                )
            time.sleep(poll_s)
    outcome, summary = deployment_outcome(settings, run.run_id)
    return FinishedRun(run, state, outcome, summary)


def deployment_outcome(settings: Settings, kfp_run_id: str) -> tuple[str | None, dict[str, Any]]:
    """The outcome and summary MLflow holds for the deployment that KFP run made, if any."""
    import json

    from mlflow import MlflowClient

    client = MlflowClient(settings.tracking_uri, settings.registry_uri)
    try:
        experiment = client.get_experiment_by_name(DEPLOYMENTS)
        runs = [] if experiment is None else client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{RUN_KFP}` = '{kfp_run_id}'",
            max_results=1,
        )  # fmt: skip
    except Exception:  # a tracking server this machine cannot reach: KFP's state alone
        return None, {}
    if not runs:
        return None, {}
    found = runs[0]
    summary: dict[str, Any] = {"mlflow_run_id": found.info.run_id}
    with contextlib.suppress(Exception):
        path = client.download_artifacts(found.info.run_id, "summary.json")
        summary = {**json.loads(Path(path).read_text()), **summary}
    if found.data.tags.get(RUN_ERROR):
        summary["error"] = found.data.tags[RUN_ERROR]
    return found.data.tags.get(RUN_OUTCOME), summary


def parse_every(text: str) -> int:
    """``15m``, ``1h``, ``90s`` or plain seconds, as whole seconds (at least one minute)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = text.strip().lower()
    try:
        seconds = int(float(raw[:-1]) * units[raw[-1]]) if raw[-1:] in units else int(raw)
    except (ValueError, KeyError):
        seconds = -1
    if seconds < 60:
        raise InputError(
            f"--every {text!r} is not an interval of a minute or more",
            hint="write it as 15m, 1h or 900 (seconds)",
        )
    return seconds


def submit_monitor(
    host: str,
    model: str,
    every_s: int,
    *,
    policy_file: Path | None = None,
    policy_dir: Path | None = None,
    experiment: str = EXPERIMENT,
    token: str | None = None,
    service_account: str | None = SERVICE_ACCOUNT,
) -> RecurringRun:
    """A recurring run of ``monitor.yaml`` every ``every_s``: no catch-up, one at a time."""
    import kfp

    policy = load_policy(model, policy_file, policy_dir=policy_dir).policy
    with _kfp(host, "create the monitor's recurring run"):
        client = kfp.Client(host=host, existing_token=token)
        exp = client.create_experiment(experiment)
        created = client.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name=f"monitor-{model}",
            description=f"modelship drift monitor of {model}'s champion, every {every_s} s",
            interval_second=every_s,
            max_concurrency=1,
            no_catchup=True,
            params={"model_name": model, "policy_yaml": policy_yaml(policy)},
            pipeline_package_path=str(_package("monitor")),
            enable_caching=False,
            service_account=service_account or None,
        )
    return RecurringRun(str(created.recurring_run_id), host, every_s)
