"""An ONNX model in Triton's model-repository layout, for Seldon Core v2's Triton server.

Triton reads one folder per model: ``<model>/config.pbtxt`` and ``<model>/1/model.onnx`` (the
version folder; Seldon's ``Model.spec.storageUri`` points at ``<model>``). The config is written
from the graph itself, so it fits whatever the converter emitted: skl2onnx and onnxmltools
classifiers (``label`` as int64, ``probabilities`` as float32, ZipMap off), regressors
(``variable``), and torch.onnx exports (one float output). Dimensions are the graph's, with
``-1`` where a dimension is dynamic and always for the first (a request's rows), and
``max_batch_size: 0`` so Triton takes that axis as part of the shape instead of adding its own.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from modelship.core.errors import PackagingError

#: ONNX TensorProto element types -> Triton's DataType names (model_config.proto)
DATA_TYPES = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
    6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
    11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16",
}  # fmt: skip
ONNX_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"


def _tensors(values: object, kind: str, model: Path) -> list[tuple[str, str, list[int]]]:
    found = []
    for value in values:  # type: ignore[attr-defined]
        tensor = value.type.tensor_type if value.type.HasField("tensor_type") else None
        if tensor is None or tensor.elem_type not in DATA_TYPES:
            raise PackagingError(
                f"{model.name}: {kind} {value.name!r} is not a plain tensor Triton can serve "
                f"({value.type.WhichOneof('value')})",
                hint="convert classifiers without ZipMap (skl2onnx options zipmap: False), "
                "as the optimize stage does",
            )
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        # the first axis is a request's rows, whatever the graph declares: onnxmltools'
        # LightGBM declares its label as [1] yet answers one per row (ONNX Runtime warns and
        # returns the real shape), and Triton checks answers against these dims
        found.append((value.name, DATA_TYPES[tensor.elem_type], [-1, *dims[1:]]))
    return found


def model_config(model: Path, name: str) -> str:
    """``config.pbtxt`` (protobuf text format) for the ONNX file ``model``, named ``name``."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    lines = [f'name: "{name}"', 'backend: "onnxruntime"', "max_batch_size: 0"]
    for kind, values in (("input", inputs), ("output", graph.output)):
        for tensor_name, data_type, dims in _tensors(values, kind, model):
            lines += [
                f"{kind} [",
                "  {",
                f'    name: "{tensor_name}"',
                f"    data_type: {data_type}",
                f"    dims: [ {', '.join(str(d) for d in dims)} ]",
                "  }",
                "]",
            ]
    return "\n".join(lines) + "\n"


def write_repository(model: Path, name: str, out: Path) -> dict[str, str]:
    """``out/name/config.pbtxt`` and ``out/name/1/model.onnx``; each file's sha256 by its path
    relative to ``out/name``."""
    folder = out / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(model_config(model, name))
    (folder / "1" / ONNX_FILE).write_bytes(model.read_bytes())
    return {
        str(path.relative_to(folder)): "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
