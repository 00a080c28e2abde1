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

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

CRD_FILES = {
    "mlops.seldon.io/v1alpha1/Model": "seldon-core-v2/mlops.seldon.io_models.yaml",
    "mlops.seldon.io/v1alpha1/Experiment": "seldon-core-v2/mlops.seldon.io_experiments.yaml",
    "mlops.seldon.io/v1alpha1/Pipeline": "seldon-core-v2/mlops.seldon.io_pipelines.yaml",
    "serving.kserve.io/v1beta1/InferenceService": "kserve/serving.kserve.io_inferenceservices.yaml",
}


def schemas_dir() -> Path:
    env = os.environ.get("MODELSHIP_CRD_SCHEMAS")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "schemas"


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists its fields.

    CRD schemas leave ``additionalProperties`` out; the API server then drops unknown fields,
    and since Kubernetes 1.27 ``kubectl`` asks it to refuse them (``--validate=strict``). A
    misspelt field such as ``canaryTrafficPercentage`` would otherwise pass here and do nothing
    there.
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(api_version: str, kind: str) -> Any:
    folder = schemas_dir()
    if not folder.is_dir():
        pytest.skip(f"no CRD schemas at {folder} (set MODELSHIP_CRD_SCHEMAS to their folder)")
    path = folder / CRD_FILES[f"{api_version}/{kind}"]
    with path.open() as f:
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 2 MB for KServe
    assert crd["spec"]["names"]["kind"] == kind
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    assert version in versions, f"{path} serves {sorted(versions)}, not {version}"
    schema = _strict(versions[version]["schema"]["openAPIV3Schema"])
    # OpenAPI v3.0 schemas follow draft 4 (boolean exclusiveMinimum and the like)
    return jsonschema.Draft4Validator(schema)


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    """What the object's CRD schema refuses in it; empty when it passes."""
    validator = crd_validator(manifest["apiVersion"], manifest["kind"])
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]
