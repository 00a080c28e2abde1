"""The Triton model folder Seldon's Triton server loads, for what each converter emits.

The ``config.pbtxt`` is parsed against Triton's own schema (``model_config.proto``, as shipped
in NVIDIA's ``tritonclient`` package) and compared with the graph: skl2onnx (a forest with its
int64 label), onnxmltools (LightGBM) and torch.onnx (an MLP classifier and a regressor).
No Triton server runs here: what is checked is the file it reads and the layout it expects.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from google.protobuf import text_format

from modelship.components.optimize import convert as conv
from modelship.components.serving import triton
from modelship.core.errors import PackagingError


def _model_config_pb2() -> ModuleType:
    """Triton's ModelConfig message, loaded from its file (the package's grpc module would
    import grpcio, which is not needed to read a config)."""
    found = importlib.util.find_spec("tritonclient")
    if found is None or not found.submodule_search_locations:
        pytest.skip("tritonclient is not installed (make venv installs it)")
    path = Path(next(iter(found.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _features(n: int = 64, columns: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(rng.normal(size=(n, columns)), columns=[f"f{i}" for i in range(columns)])


def _forest(x: pd.DataFrame) -> bytes:
    from sklearn.ensemble import RandomForestClassifier

    y = (x["f0"] > 0).astype(int)
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    return conv._sklearn(model, x, 17)[0]


def _lightgbm(x: pd.DataFrame) -> bytes:
    lightgbm = pytest.importorskip("lightgbm")
    y = (x["f1"] > 0).astype(int)
    model = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(x, y)
    return conv._lightgbm(model, x, 17)[0]


def _torch(x: pd.DataFrame, outputs: int) -> bytes:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 8), torch.nn.ReLU(), torch.nn.Linear(8, outputs)
    )
    return conv._pytorch(module.eval(), x, 17)[0]


CASES = {
    "skl2onnx-forest": (_forest, {"label": "TYPE_INT64", "probabilities": "TYPE_FP32"}),
    "onnxmltools-lightgbm": (_lightgbm, {"label": "TYPE_INT64", "probabilities": "TYPE_FP32"}),
    "torch-classifier": (lambda x: _torch(x, 3), {"label": "TYPE_INT64",
                                                  "probabilities": "TYPE_FP32"}),
    "torch-regressor": (lambda x: _torch(x, 1), {"variable": "TYPE_FP32"}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_the_config_fits_what_each_converter_emits(case: str, tmp_path: Path) -> None:
    make, outputs = CASES[case]
    x = _features()
    model = tmp_path / "model.onnx"
    model.write_bytes(make(x))
    files = triton.write_repository(model, "bc-v3", tmp_path / "repo")
    folder = tmp_path / "repo" / "bc-v3"
    assert sorted(files) == ["1/model.onnx", "config.pbtxt"]  # Triton's layout
    assert (folder / "1" / "model.onnx").read_bytes() == model.read_bytes()

    pb2 = _model_config_pb2()
    config: Any = text_format.Parse((folder / "config.pbtxt").read_text(), pb2.ModelConfig())
    assert config.backend == "onnxruntime" and config.max_batch_size == 0
    assert [i.name for i in config.input] == [conv.INPUT_NAME]
    assert pb2.DataType.Name(config.input[0].data_type) == "TYPE_FP32"
    assert list(config.input[0].dims) == [-1, x.shape[1]]
    declared = {o.name: pb2.DataType.Name(o.data_type) for o in config.output}
    assert declared == outputs
    # the config agrees with what ONNX Runtime sees in the graph, and the batch axis is free
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert {o.name for o in session.get_outputs()} == set(outputs)
    answers = session.run(None, {conv.INPUT_NAME: x.to_numpy(np.float32)})
    for out, answer in zip(config.output, answers, strict=True):
        assert len(out.dims) == answer.ndim
        assert all(d in (-1, s) for d, s in zip(out.dims, answer.shape, strict=True))


def test_a_graph_with_a_zipmap_is_refused_naming_the_fix(tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x = _features()
    model = LogisticRegression().fit(x, (x["f0"] > 0).astype(int))
    onx = to_onnx(model, x.to_numpy(np.float32)[:2])  # ZipMap on: a sequence of maps
    path = tmp_path / "model.onnx"
    onnx.save(onx, str(path))
    with pytest.raises(PackagingError) as refused:
        triton.model_config(path, "m")
    assert "not a plain tensor" in refused.value.message
    assert "zipmap" in (refused.value.hint or "")
