"""A registered model's artifact as modelship reads it: ``MLmodel``, signature, what it loads.

Shared by the stages that open a model version (validate, optimize, package); reading only, no
loading, so nothing here runs the model's code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from modelship.core.errors import InputError
from modelship.core.verdict import Check
from modelship.policies.schema import ModelLoading

_PICKLE_FORMATS = {"pickle", "cloudpickle"}
#: torch.save writes .pt/.pth as pickles; .pt2 (torch.export) is a pickle-free archive
_PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib", ".pt", ".pth"}


@dataclass(frozen=True)
class Signature:
    #: (name, MLflow type) per input column; empty for tensor-based or missing signatures
    columns: list[tuple[str, str | None]]
    #: MLflow type of the output (column type or tensor dtype), when the signature has one
    output_type: str | None
    present: bool


def model_inputs(frame: pd.DataFrame, signature: Signature, target: str) -> pd.DataFrame:
    """The columns of ``frame`` the model takes: its signature's, in order, or all but the target."""
    if signature.columns:
        return frame[[name for name, _ in signature.columns]]
    return frame.drop(columns=[target])


def read_mlmodel(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "MLmodel"
    if not path.is_file():
        raise InputError(
            f"{model_dir} holds no MLmodel file: not an MLflow model",
            hint="register models with mlflow.<flavor>.log_model(..., registered_model_name=...)",
        )
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def read_signature(mlmodel: dict[str, Any]) -> Signature:
    sig = mlmodel.get("signature") or {}
    inputs = json.loads(sig["inputs"]) if sig.get("inputs") else []
    outputs = json.loads(sig["outputs"]) if sig.get("outputs") else []
    columns = [
        (c["name"], c.get("type")) for c in inputs if c.get("name") and c.get("type") != "tensor"
    ]
    out_type = None
    if outputs:
        first = outputs[0]
        out_type = (
            first.get("tensor-spec", {}).get("dtype")
            if first.get("type") == "tensor"
            else first.get("type")
        )
    return Signature(columns, out_type, bool(sig))


def artifact_checks(model_dir: Path, mlmodel: dict[str, Any], loading: ModelLoading) -> list[Check]:
    """Refuse, before anything is loaded, artifacts that would run code or trust unknown types."""
    checks = []
    formats = {
        str(conf.get("serialization_format"))
        for conf in (mlmodel.get("flavors") or {}).values()
        if isinstance(conf, dict) and conf.get("serialization_format")
    }
    pickled = sorted(p.name for p in Path(model_dir).rglob("*") if p.suffix in _PICKLE_SUFFIXES)
    uses_pickle = bool(formats & _PICKLE_FORMATS) or bool(pickled)
    ok = loading.allow_pickle or not uses_pickle
    checks.append(
        Check(
            name="model.serialization",
            kind="model",
            passed=ok,
            measured=", ".join(sorted(formats) + pickled) or "native",
            threshold="no pickle" if not loading.allow_pickle else "pickle allowed",
            reason="artifacts use no pickle"
            if not uses_pickle
            else (
                "pickle allowed by policy"
                if ok
                else "the model is pickled, and loading a pickle runs "
                "arbitrary code; save it with skops or the flavor's native format, or set "
                "validate.model.allow_pickle: true for this model"
            ),
        )
    )
    declared: set[str] = set()
    for conf in (mlmodel.get("flavors") or {}).values():
        if isinstance(conf, dict):
            declared.update(conf.get("skops_trusted_types") or [])
    untrusted = sorted(declared - set(loading.trusted_types))
    checks.append(
        Check(
            name="model.trusted_types",
            kind="model",
            passed=not untrusted,
            measured=", ".join(sorted(declared)) or "none",
            threshold="subset of policy validate.model.trusted_types",
            reason="declared skops types are all trusted by the policy"
            if not untrusted
            else f"the model asks to trust {untrusted}, which the policy does not list; add them to "
            "validate.model.trusted_types only if you know what they load",
        )
    )
    return checks
