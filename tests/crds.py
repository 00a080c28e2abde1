"""The CRD schemas of the systems modelship drives on Kubernetes, as validators.

The CRDs lie outside the project, in ``../shared/schemas`` (or ``$MODELSHIP_CRD_SCHEMAS``), as
their projects publish them; where they are absent, a test that needs them skips saying where
it looked. Used by the manifest tests and by the Kubernetes API stand-in, which refuses an
object its CRD's schema refuses, as the API server does.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelship.components.targets.crdschema import CrdSchema, served_schema

CRD_FILES = {
    "mlops.seldon.io/v1alpha1/Model": "seldon-core-v2/mlops.seldon.io_models.yaml",
    "mlops.seldon.io/v1alpha1/Experiment": "seldon-core-v2/mlops.seldon.io_experiments.yaml",
    "mlops.seldon.io/v1alpha1/Pipeline": "seldon-core-v2/mlops.seldon.io_pipelines.yaml",
    "serving.kserve.io/v1beta1/InferenceService": "kserve/serving.kserve.io_inferenceservices.yaml",
}


def schemas_dir() -> Path:
    env = os.environ.get("MODELSHIP_CRD_SCHEMAS")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "schemas"


def require() -> Path:
    """The schemas folder; the test skips, saying where it looked, where there is none."""
    folder = schemas_dir()
    if not folder.is_dir():
        pytest.skip(f"no CRD schemas at {folder} (set MODELSHIP_CRD_SCHEMAS to their folder)")
    return folder


@cache
def crd(api_version: str, kind: str) -> dict[str, Any]:
    """The CRD that serves ``kind`` at ``api_version``, as its project publishes it."""
    path = require() / CRD_FILES[f"{api_version}/{kind}"]
    with path.open() as f:
        loaded: dict[str, Any] = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert loaded["spec"]["names"]["kind"] == kind  # 2 MB of YAML for KServe: read once
    group, version = api_version.split("/")
    assert loaded["spec"]["group"] == group
    assert served_schema(loaded, version) is not None, f"{path} does not serve {version}"
    return loaded


@cache
def _schema(api_version: str, kind: str) -> CrdSchema:
    served = served_schema(crd(api_version, kind), api_version.split("/")[1])
    assert served is not None
    return CrdSchema(served)


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    """What the object's CRD schema refuses in it, by the API server's rules (with unknown
    fields refused, as ``kubectl --validate=strict`` asks); empty when it passes."""
    return _schema(manifest["apiVersion"], manifest["kind"]).errors(manifest)
