"""Start the compiled deploy pipeline on a Kubeflow Pipelines endpoint, with the same parameters
that `modelship deploy` takes locally."""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from dataclasses import dataclass

from modelship.core.errors import InputError, StageError
from modelship.pipelines.compile import PIPELINE_DIR

EXPERIMENT = "modelship"


@dataclass(frozen=True)
class SubmittedRun:
    run_id: str
    host: str
    experiment: str

    @property
    def url(self) -> str:
        return f"{self.host.rstrip('/')}/#/runs/details/{self.run_id}"


def submit(
    host: str,
    model: str,
    *,
    version: str | None = None,
    alias: str | None = None,
    policy_file: str | None = None,
    experiment: str = EXPERIMENT,
    token: str | None = None,
) -> SubmittedRun:
    """Create a run of ``pipelines/deploy.yaml`` on ``host``; the run's id and link."""
    import kfp

    package = PIPELINE_DIR / "deploy.yaml"
    if not package.is_file():
        raise InputError(f"{package} is missing", hint="run `modelship compile` first")
    arguments = {
        "model_name": model,
        "version": version or "",
        "alias": alias or "",
        "policy_file": policy_file or "",
    }
    try:
        # kfp prints links to stdout, which belongs to --json output
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2+"
            client = kfp.Client(host=host, existing_token=token)
            result = client.create_run_from_pipeline_package(
                str(package),
                arguments=arguments,
                run_name=f"deploy-{model}-{version or alias or 'latest'}-{time.strftime('%Y%m%d-%H%M%S')}",
                experiment_name=experiment,
            )
    except Exception as e:  # kfp raises ApiException, urllib3 and connection errors
        raise StageError(
            f"could not start the deploy pipeline on {host}: {type(e).__name__}: {e}",
            hint="check the KFP host and, on a multi-user cluster, the token (KFP_TOKEN)",
        ) from e
    return SubmittedRun(str(result.run_id), host, experiment)
