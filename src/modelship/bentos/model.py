"""Load the packaged model, after checking its files against the digests the build recorded."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .config import ServingConfig

#: execution providers for the optimize stage's GPU variants; CPU is always the fallback
_PROVIDERS = {
    "cuda": ["CUDAExecutionProvider"],
    "fp16": ["CUDAExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
}


class ModelFilesChanged(RuntimeError):
    """A packaged file differs from what was built: refuse to serve it."""


class Predictor(Protocol):
    def predict(self, x: np.ndarray) -> list[dict[str, Any]]: ...


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(model_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(model_dir)): sha256(p)
        for p in sorted(model_dir.rglob("*"))
        if p.is_file()
    }


def verify_files(model_dir: Path, expected: dict[str, str]) -> None:
    found = file_digests(model_dir)
    changed = sorted(k for k in expected if found.get(k) != expected[k])
    extra = sorted(set(found) - set(expected))
    if changed or extra:
        what = (f"changed or missing: {changed}" if changed else "") + (
            f" unexpected: {extra}" if extra else ""
        )
        raise ModelFilesChanged(
            f"the model files in this Bento differ from the ones it was built with ({what.strip()}); "
            "rebuild it with the package stage (modelship deploy) instead of editing it"
        )


class OnnxPredictor:
    def __init__(self, config: ServingConfig, model_dir: Path) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = config.intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        available = set(ort.get_available_providers())
        wanted = _PROVIDERS.get(config.variant, [])
        providers = [p for p in wanted if p in available] + ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(model_dir / "model.onnx"), so, providers=providers)
        self.input_name = config.input_name
        self.classes = list(config.classes)
        self.classification = config.task == "classification"

    def predict(self, x: np.ndarray) -> list[dict[str, Any]]:
        outputs = self.session.run(None, {self.input_name: x})
        if self.classification:
            scores = np.asarray(outputs[1], dtype=np.float64)
            best = np.argmax(scores, axis=1)
            classes = self.classes
            return [
                {"prediction": classes[k], "probabilities": row}
                for k, row in zip(best.tolist(), scores.round(6).tolist(), strict=True)
            ]
        values = np.asarray(outputs[0], dtype=np.float64).reshape(-1)
        return [{"prediction": v} for v in values.tolist()]


class NativePredictor:
    """The MLflow model itself, where no ONNX variant passed the optimize stage."""

    def __init__(self, config: ServingConfig, model_dir: Path) -> None:
        import mlflow.pyfunc

        self.model = mlflow.pyfunc.load_model(str(model_dir / "mlflow_model"))
        self.columns = config.columns

    def predict(self, x: np.ndarray) -> list[dict[str, Any]]:
        import pandas as pd

        out = np.asarray(self.model.predict(pd.DataFrame(x, columns=self.columns))).reshape(-1)
        return [{"prediction": v} for v in out.tolist()]


def load(config: ServingConfig, model_dir: Path) -> Predictor:
    verify_files(model_dir, config.files)
    if config.onnx:
        return OnnxPredictor(config, model_dir)
    return NativePredictor(config, model_dir)
