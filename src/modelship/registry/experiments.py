"""The MLflow experiments modelship writes to, made on first use.

Its own module, importing nothing else of the registry: the deployment record, the shared state
and the audit trail all need it, and the registry client records to the audit trail.
"""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from modelship.core.settings import Settings


def ensure_experiment(client: MlflowClient, settings: Settings, name: str) -> str:
    """The experiment's id, creating it (with its artifacts under MODELSHIP_HOME) when missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if settings.artifact_root is not None:
        location = Path(settings.artifact_root, name).as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException:
        # another process created it between our read and our write
        again = client.get_experiment_by_name(name)
        if again is None:
            raise
        return str(again.experiment_id)
