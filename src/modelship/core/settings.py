"""Settings read once, at an entry point, and passed down as values.

The embedded default keeps everything under ``MODELSHIP_HOME`` (``./.modelship``): an MLflow
SQLite store (``mlflow.db``) and an artifact root (``artifacts/``). ``MLFLOW_TRACKING_URI``
points the same code at a tracking server instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = ".modelship"


@dataclass(frozen=True)
class Settings:
    home: Path
    tracking_uri: str
    registry_uri: str
    #: artifact root for experiments that modelship creates; None: the server decides
    artifact_root: str | None
    #: the folder of per-model policies (MODELSHIP_POLICIES); None: the shipped ones
    policies: Path | None = None

    @property
    def bentoml_home(self) -> Path:
        """BentoML's store (the Bentos) lives under modelship's home, beside MLflow's."""
        return self.home / "bentoml"

    @property
    def embedded(self) -> bool:
        return self.artifact_root is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("MODELSHIP_HOME") or DEFAULT_HOME).resolve()
        policies = (
            Path(env["MODELSHIP_POLICIES"]).resolve() if env.get("MODELSHIP_POLICIES") else None
        )
        db = home / "mlflow.db"
        uri = f"sqlite:///{db}"
        tracking = env.get("MLFLOW_TRACKING_URI", "")
        # MLflow's set_tracking_uri (in prepare) exports the embedded store's URI to child
        # processes: that is still the embedded store, whose artifacts live under home
        if tracking and tracking != uri:
            return cls(
                home=home,
                tracking_uri=tracking,
                registry_uri=env.get("MLFLOW_REGISTRY_URI", "") or tracking,
                artifact_root=None,
                policies=policies,
            )
        return cls(
            home=home,
            tracking_uri=uri,
            registry_uri=uri,
            artifact_root=str(home / "artifacts"),
            policies=policies,
        )

    def prepare(self) -> None:
        """Create the home folder and point MLflow at this store (process-wide, once)."""
        import mlflow

        self.home.mkdir(parents=True, exist_ok=True)
        # MLflow's per-file download bars and INFO lines drown modelship's own progress view
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # read by BentoML when it is first imported, so set before any stage imports it
        os.environ["BENTOML_HOME"] = str(self.bentoml_home)
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)

    def child_env(self) -> dict[str, str]:
        """Environment for subprocesses (pipeline steps, probes) so they find the same store."""
        env = dict(os.environ)
        env["MODELSHIP_HOME"] = str(self.home)
        env["BENTOML_HOME"] = str(self.bentoml_home)
        if self.policies is not None:
            env["MODELSHIP_POLICIES"] = str(self.policies)
        env.setdefault("BENTOML_DO_NOT_TRACK", "true")
        if not self.embedded:
            env["MLFLOW_TRACKING_URI"] = self.tracking_uri
            env["MLFLOW_REGISTRY_URI"] = self.registry_uri
        env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        env.setdefault("GX_ANALYTICS_ENABLED", "false")
        return env
