"""Open Inference Protocol (KServe v2) messages, as Seldon Core v2 writes them to Kafka.

Seldon records each request and answer of a model that serves in a Pipeline as the protobuf
``inference.ModelInferRequest`` and ``inference.ModelInferResponse`` of the protocol's gRPC
definition (``grpc_predict_v2.proto``). The classes here are built from that definition's field
numbers (only the fields read here; protobuf skips the others), so no generated code or gRPC
package is needed. :func:`tensors` turns a message's tensors into numpy arrays, from the typed
``contents`` or from ``raw_*_contents`` (little-endian, row-major), whichever the sender used.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
#: the protocol's datatype names -> numpy, and which typed ``contents`` field carries each
DTYPES: dict[str, tuple[str, str]] = {
    "BOOL": ("bool", "bool_contents"),
    "INT8": ("int8", "int_contents"), "INT16": ("int16", "int_contents"),
    "INT32": ("int32", "int_contents"), "INT64": ("int64", "int64_contents"),
    "UINT8": ("uint8", "uint_contents"), "UINT16": ("uint16", "uint_contents"),
    "UINT32": ("uint32", "uint_contents"), "UINT64": ("uint64", "uint64_contents"),
    "FP32": ("<f4", "fp32_contents"), "FP64": ("<f8", "fp64_contents"),
    "FP16": ("<f2", "fp32_contents"),
}  # fmt: skip


def _field(name: str, number: int, kind: int, repeated: bool = False, of: str = "") -> Any:
    field = _F(name=name, number=number, type=kind,
               label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)  # fmt: skip
    if of:
        field.type_name = f".inference.{of}"
    return field


@cache
def _classes() -> dict[str, Any]:
    proto = descriptor_pb2.FileDescriptorProto(
        name="modelship/oip_subset.proto", package="inference", syntax="proto3"
    )
    contents = proto.message_type.add(name="InferTensorContents")
    for name, number, kind in (
        ("bool_contents", 1, _F.TYPE_BOOL), ("int_contents", 2, _F.TYPE_INT32),
        ("int64_contents", 3, _F.TYPE_INT64), ("uint_contents", 4, _F.TYPE_UINT32),
        ("uint64_contents", 5, _F.TYPE_UINT64), ("fp32_contents", 6, _F.TYPE_FLOAT),
        ("fp64_contents", 7, _F.TYPE_DOUBLE), ("bytes_contents", 8, _F.TYPE_BYTES),
    ):  # fmt: skip
        contents.field.append(_field(name, number, kind, repeated=True))
    for tensor_name in ("InferInputTensor", "InferOutputTensor"):
        tensor = proto.message_type.add(name=tensor_name)
        tensor.field.extend([
            _field("name", 1, _F.TYPE_STRING), _field("datatype", 2, _F.TYPE_STRING),
            _field("shape", 3, _F.TYPE_INT64, repeated=True),
            _field("contents", 5, _F.TYPE_MESSAGE, of="InferTensorContents"),
        ])  # fmt: skip
    for message, tensor_name, raw_number in (
        ("ModelInferRequest", "InferInputTensor", 7),
        ("ModelInferResponse", "InferOutputTensor", 6),
    ):
        msg = proto.message_type.add(name=message)
        tensors_field = "inputs" if message == "ModelInferRequest" else "outputs"
        raw_field = (
            "raw_input_contents" if message == "ModelInferRequest" else "raw_output_contents"
        )
        msg.field.extend([
            _field("model_name", 1, _F.TYPE_STRING), _field("model_version", 2, _F.TYPE_STRING),
            _field("id", 3, _F.TYPE_STRING),
            _field(tensors_field, 5, _F.TYPE_MESSAGE, repeated=True, of=tensor_name),
            _field(raw_field, raw_number, _F.TYPE_BYTES, repeated=True),
        ])  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))
        for name in ("ModelInferRequest", "ModelInferResponse")
    }


def parse_request(data: bytes) -> Any:
    return _classes()["ModelInferRequest"].FromString(data)


def parse_response(data: bytes) -> Any:
    return _classes()["ModelInferResponse"].FromString(data)


def tensors(message: Any) -> dict[str, np.ndarray]:
    """The message's tensors by name, shaped as the message says."""
    is_request = hasattr(message, "inputs")
    found = message.inputs if is_request else message.outputs
    raw = message.raw_input_contents if is_request else message.raw_output_contents
    out: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(found):
        if tensor.datatype not in DTYPES:
            raise ValueError(f"tensor {tensor.name!r} has datatype {tensor.datatype!r}")
        dtype, field = DTYPES[tensor.datatype]
        shape = tuple(int(d) for d in tensor.shape)
        if raw:
            values = np.frombuffer(raw[i], dtype=dtype)
        else:
            values = np.asarray(list(getattr(tensor.contents, field)), dtype=dtype)
        if values.size != int(np.prod(shape)):
            raise ValueError(f"tensor {tensor.name!r}: {values.size} values for shape {shape}")
        out[tensor.name] = values.reshape(shape)
    return out
