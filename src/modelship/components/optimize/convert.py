"""Convert a validated MLflow model to ONNX, and compute its native outputs for comparison.

Supported: scikit-learn estimators and Pipelines (skl2onnx), LightGBM boosters (onnxmltools),
PyTorch modules saved by MLflow as ``pt2`` (torch.onnx), and models already in ONNX. Every converted model takes one float tensor ``input`` with the
signature's columns in order; classifiers give ``label`` and ``probabilities`` (no ZipMap).
A model that does not convert can still be loaded (:func:`load_unconverted`) to teach a student
that does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from modelship.core.errors import ModelshipError
from modelship.core.records import Task

INPUT_NAME = "input"


class ConversionFailed(ModelshipError):
    """The model could not be converted; the policy decides whether that rejects it."""


@dataclass(frozen=True)
class NativeOutputs:
    """What the native model says about the validation rows: the reference for equivalence."""

    task: Task
    values: NDArray[Any]  # labels or regression values
    scores: NDArray[np.float64] | None = None  # class probabilities, columns in ``classes`` order
    classes: tuple[Any, ...] = ()

    def take(self, index: NDArray[np.intp]) -> NativeOutputs:
        """What it says about the rows at ``index`` only."""
        scores = None if self.scores is None else self.scores[index]
        return NativeOutputs(self.task, np.asarray(self.values)[index], scores, self.classes)


@dataclass(frozen=True)
class Converted:
    onnx_bytes: bytes
    native: NativeOutputs
    flavor: str
    converter: str
    #: the loaded native model, which approximate variants start from: the Python object, or
    #: the ONNX bytes for a model that was ONNX already
    model: Any = field(default=None, repr=False, compare=False)


def _flavor(mlmodel: dict[str, Any]) -> str:
    flavors = mlmodel.get("flavors") or {}
    for name in ("onnx", "lightgbm", "sklearn", "pytorch"):
        if name in flavors:
            return name
    others = sorted(k for k in flavors if k != "python_function")
    raise ConversionFailed(
        f"no ONNX converter for flavor {', '.join(others) or 'python_function'}",
        hint="supported: sklearn, lightgbm, pytorch, onnx; set optimize.on_conversion_failure: native "
        "to serve the native model instead",
    )


def _booster_task(booster: Any) -> tuple[Task, int]:
    objective = str(booster.params.get("objective", "")) if hasattr(booster, "params") else ""
    dump = booster.dump_model(num_iteration=0) if hasattr(booster, "dump_model") else {}
    objective = objective or str(dump.get("objective", ""))
    classes = int(dump.get("num_class", 1))
    if objective.startswith(("binary", "multiclass", "softmax", "multiclassova")):
        return "classification", max(classes, 2)
    return "regression", 1


def _sklearn(model: Any, features: pd.DataFrame, target_opset: int) -> tuple[bytes, NativeOutputs]:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    last = model.steps[-1][1] if hasattr(model, "steps") else model
    options = {id(last): {"zipmap": False}} if hasattr(last, "predict_proba") else None
    onx = to_onnx(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, features.shape[1]]))],
        options=options,
        target_opset={"": target_opset, "ai.onnx.ml": 3},
    )
    return onx.SerializeToString(), _sklearn_outputs(model, features)


def _sklearn_outputs(model: Any, features: pd.DataFrame) -> NativeOutputs:
    if hasattr(model, "predict_proba"):
        return NativeOutputs(
            "classification",
            np.asarray(model.predict(features)),
            np.asarray(model.predict_proba(features), dtype=np.float64),
            tuple(np.asarray(model.classes_).tolist()),
        )
    return NativeOutputs("regression", np.asarray(model.predict(features), dtype=np.float64))


def _lightgbm(
    booster: Any, features: pd.DataFrame, target_opset: int
) -> tuple[bytes, NativeOutputs]:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    if hasattr(booster, "booster_"):  # the scikit-learn API wraps a Booster
        booster = booster.booster_
    onx = onnxmltools.convert_lightgbm(
        booster,
        initial_types=[(INPUT_NAME, FloatTensorType([None, features.shape[1]]))],
        zipmap=False,
        target_opset=min(target_opset, 15),  # onnxmltools' LightGBM converter stops at 15
    )
    return onx.SerializeToString(), lightgbm_outputs(booster, features)


def lightgbm_outputs(
    booster: Any, features: pd.DataFrame, num_iteration: int | None = None
) -> NativeOutputs:
    if hasattr(booster, "booster_"):
        booster = booster.booster_
    task, n_classes = _booster_task(booster)
    raw = np.asarray(booster.predict(features, num_iteration=num_iteration), dtype=np.float64)
    if task == "classification":
        scores = np.column_stack([1 - raw, raw]) if raw.ndim == 1 else raw
        classes = tuple(range(n_classes))
        return NativeOutputs(task, np.argmax(scores, axis=1), scores, classes)
    return NativeOutputs(task, raw)


def _pytorch(module: Any, features: pd.DataFrame, target_opset: int) -> tuple[bytes, NativeOutputs]:
    """torch.onnx's dynamo exporter, with a dynamic batch axis. A module with more than one
    output column is taken as a classifier over its logits: ``label`` and softmax
    ``probabilities`` are added to the graph, as the other converters give them."""
    import contextlib
    import io

    import torch

    x = torch.tensor(features.to_numpy(np.float32))
    native = _pytorch_outputs(module, features)
    classify = native.task == "classification"

    class Head(torch.nn.Module):  # type: ignore[misc]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            out = self.inner(x)
            if classify:
                return torch.argmax(out, dim=1), torch.softmax(out, dim=1)
            return out.reshape(-1)

    names = ["label", "probabilities"] if classify else ["variable"]
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each pass
        program = torch.onnx.export(
            Head(module), (x[:2],), None, input_names=[INPUT_NAME], output_names=names,
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True,
            external_data=False, opset_version=max(target_opset, 18),
        )  # fmt: skip
    return program.model_proto.SerializeToString(), native


def _pytorch_outputs(module: Any, features: pd.DataFrame) -> NativeOutputs:
    import torch

    with torch.no_grad():
        logits = module(torch.tensor(features.to_numpy(np.float32)))
    raw = logits.detach().numpy().astype(np.float64)
    if raw.ndim == 2 and raw.shape[1] > 1:
        scores = np.exp(raw - raw.max(axis=1, keepdims=True))
        scores /= scores.sum(axis=1, keepdims=True)
        return NativeOutputs(
            "classification", np.argmax(raw, axis=1), scores, tuple(range(raw.shape[1]))
        )
    return NativeOutputs("regression", raw.reshape(-1))


def _onnx(
    model_dir: Path, mlmodel: dict[str, Any], features: pd.DataFrame
) -> tuple[bytes, NativeOutputs]:
    data = (model_dir / mlmodel["flavors"]["onnx"]["data"]).read_bytes()
    return data, _onnx_outputs(data, features)


def _onnx_outputs(data: bytes, features: pd.DataFrame) -> NativeOutputs:
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = session.run(None, {name: features.to_numpy(np.float32)})
    if len(outputs) >= 2 and np.asarray(outputs[1]).ndim == 2:
        scores = np.asarray(outputs[1], dtype=np.float64)
        classes = tuple(range(scores.shape[1]))
        return NativeOutputs("classification", np.argmax(scores, axis=1), scores, classes)
    return NativeOutputs("regression", np.asarray(outputs[0], dtype=np.float64).reshape(-1))


_CONVERTERS = {"sklearn": _sklearn, "lightgbm": _lightgbm, "pytorch": _pytorch}
_CONVERTER_NAMES = {
    "sklearn": "skl2onnx",
    "lightgbm": "onnxmltools",
    "pytorch": "torch.onnx (dynamo)",
}


def _pyfunc_outputs(model: Any, features: pd.DataFrame) -> NativeOutputs:
    """What an MLflow pyfunc model says, read from its predictions alone: a table of more than
    one float column is class probabilities, other floats are values, anything else labels
    (no probabilities, so metrics that need them cannot judge it)."""
    raw = model.predict(features)
    out = np.asarray(raw.to_numpy() if hasattr(raw, "to_numpy") else raw)
    if out.dtype.kind == "f" and out.ndim == 2 and out.shape[1] > 1:
        scores = out.astype(np.float64)
        return NativeOutputs(
            "classification", np.argmax(scores, axis=1), scores, tuple(range(scores.shape[1]))
        )
    if out.dtype.kind == "f":
        return NativeOutputs("regression", out.astype(np.float64).reshape(-1))
    labels = out.reshape(-1)
    return NativeOutputs("classification", labels, None, tuple(np.unique(labels).tolist()))


def predict_native(model: Any, flavor: str, features: pd.DataFrame) -> NativeOutputs:
    """What ``model`` (a :attr:`Converted.model` of ``flavor``, or a pyfunc model for
    ``pyfunc``) says about ``features``."""
    if flavor == "onnx":
        return _onnx_outputs(model, features)
    if flavor == "pyfunc":
        return _pyfunc_outputs(model, features)
    if flavor == "lightgbm":
        return lightgbm_outputs(model, features)
    if flavor == "pytorch":
        return _pytorch_outputs(model, features)
    return _sklearn_outputs(model, features)


def convert_model(
    model: Any, flavor: str, features: pd.DataFrame, target_opset: int = 17
) -> Converted:
    """An in-memory model of ``flavor`` (sklearn, lightgbm, pytorch) to ONNX, as :func:`convert`
    converts a saved one: the approximate variants take this path."""
    try:
        data, native = _CONVERTERS[flavor](model, features, target_opset)
    except Exception as e:  # converters raise many types for unsupported operators
        raise ConversionFailed(
            f"converting the {flavor} model to ONNX failed: {type(e).__name__}: {e}"
        ) from e
    return Converted(data, native, flavor, _CONVERTER_NAMES[flavor], model)


def _load(flavor: str, model_dir: Path) -> Any:
    if flavor == "sklearn":
        import mlflow.sklearn

        return mlflow.sklearn.load_model(str(model_dir))
    if flavor == "pytorch":
        import mlflow.pytorch

        return mlflow.pytorch.load_model(str(model_dir))
    import mlflow.lightgbm

    return mlflow.lightgbm.load_model(str(model_dir))


def load_unconverted(model_dir: Path, mlmodel: dict[str, Any]) -> tuple[Any, str]:
    """A model that did not convert, loaded to teach a student: by its own flavor where this
    module can load one (its probabilities are then known), else as an MLflow pyfunc model.

    ``model_dir`` must be digest-checked and have passed the artifact checks: this loads it.
    """
    flavors = mlmodel.get("flavors") or {}
    for flavor in ("lightgbm", "sklearn", "pytorch"):
        if flavor in flavors:
            return _load(flavor, model_dir), flavor
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(model_dir)), "pyfunc"


def convert(
    model_dir: Path, mlmodel: dict[str, Any], features: pd.DataFrame, target_opset: int = 17
) -> Converted:
    """ONNX bytes and the native model's outputs on ``features``.

    ``model_dir`` must be digest-checked and have passed the artifact checks: this loads it.
    """
    flavor = _flavor(mlmodel)
    try:
        if flavor == "onnx":
            data, native = _onnx(model_dir, mlmodel, features)
            return Converted(data, native, flavor, "none (already ONNX)", data)
        model = _load(flavor, model_dir)
        data, native = _CONVERTERS[flavor](model, features, target_opset)
        return Converted(data, native, flavor, _CONVERTER_NAMES[flavor], model)
    except ConversionFailed:
        raise
    except Exception as e:  # converters raise many types for unsupported operators
        raise ConversionFailed(
            f"converting the {flavor} model to ONNX failed: {type(e).__name__}: {e}",
            hint="set optimize.on_conversion_failure: native to serve the native model instead",
        ) from e
