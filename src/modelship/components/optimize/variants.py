"""ONNX Runtime variants of a converted model, and the sessions that run them.

fp32 with graph optimizations (the optimized graph saved), dynamic INT8, static INT8 calibrated
on reference rows, and the GPU paths (FP16, CUDA, TensorRT) where ONNX Runtime has the provider.
A variant that does not apply is skipped with the reason; one that fails to build says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelship.components.optimize.convert import INPUT_NAME
from modelship.policies.schema import Variant

#: operators that INT8 quantization rewrites; tree ensembles and linear classifiers have none
QUANTIZABLE_OPS = {"MatMul", "Gemm", "Conv", "Attention", "LSTM", "GRU"}

_GPU_PROVIDER = {
    Variant.FP16: "CUDAExecutionProvider",
    Variant.CUDA: "CUDAExecutionProvider",
    Variant.TENSORRT: "TensorrtExecutionProvider",
}


@dataclass(frozen=True)
class VariantFile:
    variant: Variant
    path: Path | None
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    #: why the variant does not apply here (not an error)
    skipped: str | None = None
    #: why building it failed
    error: str | None = None


@dataclass(frozen=True)
class SessionSettings:
    """Chosen on purpose and recorded: one thread per session so latency is not bought with
    cores that a server's other workers need; sequential execution for small graphs."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    execution_mode: str = "sequential"
    graph_optimization: str = "all"

    def options(self) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.intra_op_threads
        so.inter_op_num_threads = self.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # ORT warns on every batch about the label output's shape
        return so


def open_session(vf: VariantFile, settings: SessionSettings) -> Any:
    import onnxruntime as ort

    assert vf.path is not None
    return ort.InferenceSession(str(vf.path), settings.options(), providers=list(vf.providers))


def _ops(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


class _Calibration:
    """Feeds reference rows to ONNX Runtime's static quantizer, a batch at a time."""

    def __init__(self, rows: NDArray[np.float32], batch: int = 32) -> None:
        self.batches = iter([{INPUT_NAME: rows[i : i + batch]} for i in range(0, len(rows), batch)])

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        return next(self.batches, None)

    def rewind(self) -> None:  # pragma: no cover - called by some ORT versions only
        pass


def _fp32(base: Path, out: Path) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    # EXTENDED, not ALL, for the saved graph: ALL adds layout-specific ops tied to this CPU
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(out)
    so.log_severity_level = 3
    ort.InferenceSession(str(base), so, providers=["CPUExecutionProvider"])


def _build(
    variant: Variant, base: Path, workdir: Path, calibration: NDArray[np.float32]
) -> VariantFile:
    import onnxruntime as ort

    out = workdir / f"{variant}.onnx"
    if variant in _GPU_PROVIDER:
        provider = _GPU_PROVIDER[variant]
        if provider not in ort.get_available_providers():
            return VariantFile(variant, None, skipped=f"{provider} is not available (no GPU here)")
        if variant is Variant.FP16:
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(str(base)), keep_io_types=True), str(out))
        else:
            out.write_bytes(base.read_bytes())
        return VariantFile(variant, out, (provider, "CPUExecutionProvider"))
    if variant is Variant.FP32:
        _fp32(base, out)
        return VariantFile(variant, out)
    if not _ops(base) & QUANTIZABLE_OPS:
        return VariantFile(
            variant, None, skipped="no MatMul/Gemm/Conv in the graph: nothing to quantize"
        )
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if variant is Variant.INT8_DYNAMIC:
        quantize_dynamic(str(base), str(out), weight_type=QuantType.QInt8)
    else:
        quantize_static(
            str(base), str(out), _Calibration(calibration), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
    return VariantFile(variant, out)


def build_variants(
    onnx_bytes: bytes, wanted: list[Variant], workdir: Path, calibration: NDArray[np.float32]
) -> list[VariantFile]:
    """Each wanted variant as a file, skipped with a reason, or failed with the error."""
    workdir.mkdir(parents=True, exist_ok=True)
    base = workdir / "base.onnx"
    base.write_bytes(onnx_bytes)
    built = []
    for variant in wanted:
        try:
            built.append(_build(variant, base, workdir, calibration))
        except Exception as e:  # a variant that cannot be built is dropped, not fatal
            built.append(VariantFile(variant, None, error=f"{type(e).__name__}: {e}"))
    return built
