"""Log evaluation data with a training run, where the default policy looks for it.

``policies/default.yaml`` reads ``runs:/{run_id}/modelship/validation.parquet`` and
``.../reference.parquet``: a training run that calls :func:`log_datasets` needs no policy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

ARTIFACT_DIR = "modelship"


def log_datasets(
    validation: pd.DataFrame, reference: pd.DataFrame, run_id: str | None = None
) -> None:
    """Log both tables as Parquet under ``modelship/`` of the (active or given) run."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="modelship-datasets-") as tmp:
        validation.to_parquet(Path(tmp, "validation.parquet"), index=False)
        reference.to_parquet(Path(tmp, "reference.parquet"), index=False)
        if run_id is None:
            mlflow.log_artifacts(tmp, ARTIFACT_DIR)
        else:
            mlflow.MlflowClient().log_artifacts(run_id, tmp, ARTIFACT_DIR)
