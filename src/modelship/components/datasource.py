"""Read the data a policy names: local paths or MLflow artifact URIs, CSV or Parquet."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from modelship.core.errors import DataError

_MLFLOW_SCHEMES = (
    "runs:/",
    "models:/",
    "mlflow-artifacts:/",
    "s3://",
    "gs://",
    "wasbs://",
    "dbfs:/",
)


def expand(uri: str, context: Mapping[str, str]) -> str:
    """Fill ``{run_id}``, ``{model}``, ``{version}`` from the model version being deployed."""
    try:
        return uri.format_map(dict(context))
    except KeyError as e:
        raise DataError(
            f"data URI {uri!r} uses unknown placeholder {e}",
            hint="placeholders available: " + ", ".join("{" + k + "}" for k in context),
        ) from e


def _fetch(uri: str, workdir: Path) -> Path:
    if not uri.startswith(_MLFLOW_SCHEMES):
        path = Path(uri.removeprefix("file://")).expanduser()
        if not path.exists():
            raise DataError(f"data file {path} does not exist", hint="check the path in the policy")
        return path
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(workdir)))
    except (MlflowException, OSError) as e:
        raise DataError(
            f"could not download data {uri}: {e}",
            hint="log the data with the training run (modelship.datasets.log_datasets) "
            "or point the policy's data URI at an existing file",
        ) from e


def read_frame(
    uri: str, fmt: str = "auto", context: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """The table at ``uri`` as a DataFrame; a clear DataError when it cannot be read."""
    resolved = expand(uri, context or {})
    with tempfile.TemporaryDirectory(prefix="modelship-data-") as tmp:
        path = _fetch(resolved, Path(tmp))
        kind = (
            fmt if fmt != "auto" else ("parquet" if path.suffix in (".parquet", ".pq") else "csv")
        )
        try:
            frame = pd.read_parquet(path) if kind == "parquet" else pd.read_csv(path)
        except Exception as e:  # pandas raises many types for unreadable files
            raise DataError(f"could not read {resolved} as {kind}: {e}") from e
    if frame.empty:
        raise DataError(f"data {resolved} has no rows")
    return frame
