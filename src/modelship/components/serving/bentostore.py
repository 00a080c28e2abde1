"""Bentos travel through MLflow, never through a pod's disk.

The package stage exports the Bento it built (``bentoml export``, one ``.bento`` archive) into
the deployment's MLflow run and records its URI and digest on the model version. Any later step
that serves or reads a version (load-test, rollout, ``modelship serve``, the monitor), in its
own pod or on a laptop, calls :func:`present_bento`: the Bento is used from the local BentoML
store only when its files have the recorded digest, otherwise it is downloaded from MLflow and
imported (``bentoml import``), and checked again. What serves is what passed the gates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from modelship.core.errors import PackagingError
from modelship.core.records import PackagedModel
from modelship.registry.deployments import DeploymentRun
from modelship.registry.digest import tree_digest

#: where in the deployment run the exported Bento goes
ARTIFACT_DIR = "bento"
#: what serving a Bento writes into it (Python's bytecode caches of its service), left out of
#: its digest: derived from the sources, which are in it
_DERIVED = frozenset({"__pycache__"})


def bento_digest(path: Path) -> str:
    """The digest of a Bento's files in the store, as recorded when it passed the gates."""
    return tree_digest(path, skip_dirs=_DERIVED)


def store_path(bentoml_home: Path, tag: str) -> Path:
    """Where BentoML keeps the Bento ``tag`` in the store at ``bentoml_home``."""
    name, _, version = tag.partition(":")
    return Path(bentoml_home) / "bentos" / name / version


def _bentoml(args: list[str], bentoml_home: Path, log: Path, what: str) -> None:
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("PYTHONPATH", None)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        done = subprocess.run([sys.executable, "-m", "bentoml", *args], env=env, stdout=out,
                              stderr=subprocess.STDOUT, check=False, timeout=600)  # fmt: skip
    if done.returncode != 0:
        tail = " | ".join(log.read_text().strip().splitlines()[-3:])
        raise PackagingError(f"{what} failed: {tail}", hint=f"the log is {log}")


def export_bento(tag: str, bentoml_home: Path, deployment: DeploymentRun, workdir: Path) -> str:
    """Export ``tag`` into the deployment run; the artifact's ``runs:/`` URI."""
    workdir.mkdir(parents=True, exist_ok=True)
    archive = workdir / f"{tag.replace(':', '-')}.bento"
    archive.unlink(missing_ok=True)
    _bentoml(["export", tag, str(archive)], bentoml_home, workdir / "bento-export.log",
             f"bentoml export of {tag}")  # fmt: skip
    deployment.log_file(archive, ARTIFACT_DIR)
    return f"runs:/{deployment.run_id}/{ARTIFACT_DIR}/{archive.name}"


def present_bento(packaged: PackagedModel, bentoml_home: Path) -> Path:
    """The store path of ``packaged``'s Bento, imported from MLflow where it is not here as it
    passed the gates (missing, or other files under the same tag)."""
    path = store_path(bentoml_home, packaged.bento)
    if (path / "bento.yaml").is_file() and (
        not packaged.bento_digest or bento_digest(path) == packaged.bento_digest
    ):
        return path
    if not packaged.bento_uri:
        here = "is not in" if not (path / "bento.yaml").is_file() else "differs from the one in"
        raise PackagingError(
            f"v{packaged.version}'s Bento {packaged.bento} {here} this BentoML store "
            f"({bentoml_home}) and the version records no exported Bento to fetch",
            hint="deploy the version again: the package stage exports its Bento into MLflow",
        )
    import mlflow

    with tempfile.TemporaryDirectory(prefix="modelship-bento-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=packaged.bento_uri, dst_path=tmp
            )
        except Exception as e:  # MLflow, S3 and network errors alike
            raise PackagingError(
                f"could not fetch v{packaged.version}'s Bento from {packaged.bento_uri}: {e}",
                hint="check MLFLOW_TRACKING_URI and the object store's credentials",
            ) from e
        if path.exists():
            shutil.rmtree(path)
        _bentoml(["import", local], bentoml_home, Path(tmp) / "bento-import.log",
                 f"bentoml import of {packaged.bento}")  # fmt: skip
    got = bento_digest(path) if (path / "bento.yaml").is_file() else "nothing"
    if packaged.bento_digest and got != packaged.bento_digest:
        shutil.rmtree(path, ignore_errors=True)
        raise PackagingError(
            f"the Bento fetched for v{packaged.version} ({packaged.bento_uri}) is {got}, not "
            f"the {packaged.bento_digest} that passed the gates: it was not served",
            hint="someone changed the deployment run's artifact; deploy the version again",
        )
    return path
