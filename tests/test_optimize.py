"""The optimize stage against a real MLflow store: conversion, variants, equivalence, selection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelship.components.contract import run_stage
from modelship.components.mlmodel import read_mlmodel
from modelship.components.optimize import stage as optimize
from modelship.components.optimize.convert import convert, convert_model
from modelship.components.optimize.equivalence import VariantOutputs, compare
from modelship.components.optimize.gate import try_variant
from modelship.components.optimize.variants import SessionSettings, VariantFile
from modelship.core.settings import Settings
from modelship.core.tags import TAG_VARIANT
from modelship.core.verdict import Verdict
from modelship.policies.schema import Equivalence, Policy, Variant
from modelship.registry.client import Registry
from tests.support import optimize_policy, register, register_forest, stage_context

MODEL = "breast-cancer"
PASSED = Verdict(stage="validate", passed=True, reason="all checks passed")


def _policy(**optimize: Any) -> Policy:
    return optimize_policy(MODEL, **optimize)


def _run(
    settings: Settings, version: str, policy: Policy, tmp: Path, previous: Verdict = PASSED
) -> tuple[Verdict, Path]:
    registry = Registry()
    ref = registry.resolve(MODEL, version=version)
    model_dir, digest = registry.checked_download(ref, tmp / "model")
    out = tmp / "optimized"
    verdict = run_stage(
        optimize.STAGE, stage_context(settings, ref, policy, tmp / "work", registry),
        optimize.OptimizeInputs(model_dir, digest, out), previous,
    )  # fmt: skip
    return verdict, out


def _small_forest(data: Any) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    x, y, _, _ = data
    return RandomForestClassifier(10, random_state=0).fit(x, y)


def _checks(verdict: Verdict) -> dict[str, Any]:
    return {c.name: c for c in verdict.checks}


def test_tree_ensemble_becomes_a_faster_equivalent_onnx_model(
    settings: Settings, data: Any, tmp_path: Path
) -> None:
    x = data[0]
    version = register_forest(settings, MODEL, data)
    verdict, out = _run(settings, version, _policy(), tmp_path)
    assert verdict.passed, verdict.reason
    checks = _checks(verdict)
    assert checks["variant.fp32.labels"].passed and checks["variant.fp32.labels"].measured == 0
    assert checks["variant.int8_dynamic.builds"].skipped  # a tree graph has nothing to quantize
    record = json.loads((out / "optimize.json").read_text())
    assert record["variant"] == "fp32" and record["input_name"] == "input"
    assert record["columns"] == list(x.columns) and record["classes"] == [0, 1]
    assert record["session"]["intra_op_threads"] == 1
    assert (out / "model.onnx").stat().st_size > 0
    assert (tmp_path / "work" / "latency.png").read_bytes()[:4] == b"\x89PNG"
    assert verdict.figures["speedup_p50"] > 10  # against MLflow pyfunc predict, same process
    tags = Registry().resolve(MODEL, version=version).tags
    assert tags["modelship.state"] == "optimized" and tags[TAG_VARIANT] == "fp32"


def test_neural_network_gets_int8_variants_judged_by_equivalence(
    settings: Settings, data: Any, tmp_path: Path
) -> None:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, ref, val = data
    model = make_pipeline(
        StandardScaler(), MLPClassifier((32,), solver="lbfgs", max_iter=400, random_state=0)
    ).fit(x, y)
    version = register(settings, MODEL, model, x, ref, val)
    policy = _policy(equivalence={"max_label_disagreement": 0.02, "max_probability_diff": 0.05})
    verdict, _ = _run(settings, version, policy, tmp_path)
    assert verdict.passed, verdict.reason
    checks = _checks(verdict)
    for variant in ("int8_dynamic", "int8_static"):
        assert f"variant.{variant}.builds" not in checks  # built, so judged
        assert f"variant.{variant}.labels" in checks
    for variant in ("int8_dynamic", "int8_static"):
        judged = [c for name, c in checks.items() if name.startswith(f"variant.{variant}.")]
        # only a variant that passed every equivalence check is timed and can be chosen
        assert (f"{variant}.p50_us" in verdict.figures) == all(c.passed for c in judged)


@pytest.mark.parametrize(("on_failure", "passes"), [("native", True), ("reject", False)])
def test_unsupported_model_follows_the_policy(
    settings: Settings, data: Any, tmp_path: Path, on_failure: str, passes: bool
) -> None:
    from sklearn.kernel_ridge import KernelRidge

    x, y, ref, val = data
    version = register(settings, MODEL, KernelRidge().fit(x, y), x, ref, val)
    verdict, out = _run(settings, version, _policy(on_conversion_failure=on_failure), tmp_path)
    conversion = _checks(verdict)["optimize.conversion"]
    assert not conversion.passed and "KernelRidge" in conversion.reason
    assert verdict.passed is passes
    if passes:
        assert json.loads((out / "optimize.json").read_text())["variant"] == "native"
    else:
        assert "reject" in verdict.reason


def test_conversion_that_silently_changes_outputs_is_caught(
    settings: Settings, tmp_path: Path
) -> None:
    """Values near 1e9 that differ by less than float32's spacing there (64): the native float64
    pipeline separates them, the float32 ONNX graph sees groups of equal values."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = np.arange(200)
    frame = pd.DataFrame({"a": 1e9 + k.astype(float), "b": np.zeros(200)})
    y = pd.Series((k >= 101).astype(int))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1e4, max_iter=2000)).fit(frame, y)
    assert (model.predict(frame) == y).mean() > 0.99  # the native model is right
    table = frame.assign(target=y.to_numpy())
    version = register(
        settings, MODEL, model, frame, table, table, skops_trusted_types=["sklearn.tree._tree.Tree"]
    )
    policy = Policy.model_validate(
        {
            "validate": {"metrics": [{"name": "accuracy", "threshold": 0.5}]},
            "optimize": {"on_conversion_failure": "reject"},
        }
    )
    verdict, _ = _run(settings, version, policy, tmp_path)
    labels = _checks(verdict)["variant.fp32.labels"]
    assert not labels.passed and labels.measured > 0
    assert not verdict.passed and "no ONNX variant passed" in verdict.reason


def test_variant_that_fails_to_load_is_dropped(
    settings: Settings, data: Any, tmp_path: Path
) -> None:
    val = data[3]
    version = register_forest(settings, MODEL, data)
    registry = Registry()
    model_dir, _ = registry.checked_download(
        registry.resolve(MODEL, version=version), tmp_path / "m"
    )
    features = val.drop(columns="target")
    converted = convert(model_dir, read_mlmodel(model_dir), features)
    broken = tmp_path / "fp32.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    checks, session = try_variant(
        VariantFile(Variant.FP32, broken), converted.native, features.to_numpy(np.float32),
        val["target"].to_numpy(), _policy(), SessionSettings(),
    )  # fmt: skip
    assert session is None
    assert checks[0].name == "variant.fp32.loads" and not checks[0].passed
    assert "failed to load" in checks[0].reason and not checks[0].blocking


def test_a_gpu_variant_whose_provider_does_not_load_is_not_timed_on_the_cpu(
    settings: Settings, data: Any, tmp_path: Path
) -> None:
    """ONNX Runtime falls back to the next provider with only a warning: a CUDA variant that
    got the CPU would be timed, and could be chosen, as if it ran on the GPU."""
    import onnxruntime as ort

    assert "CUDAExecutionProvider" not in ort.get_available_providers()  # this CPU machine
    _, _, _, val = data
    features = val.drop(columns="target")
    converted = convert_model(_small_forest(data), "sklearn", features)
    path = tmp_path / "cuda.onnx"
    path.write_bytes(converted.onnx_bytes)
    cuda = VariantFile(Variant.CUDA, path, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    checks, session = try_variant(
        cuda, converted.native, features.to_numpy(np.float32), val["target"].to_numpy(),
        _policy(), SessionSettings(),
    )  # fmt: skip
    assert session is None
    [check] = checks
    assert check.name == "variant.cuda.provider" and check.skipped and not check.blocking
    assert "CUDAExecutionProvider could not be loaded" in check.reason
    assert "CPUExecutionProvider" in check.reason


def test_does_not_run_without_a_passing_validation(settings: Settings, tmp_path: Path) -> None:
    failed = Verdict(stage="validate", passed=False, reason="metric.accuracy: too low")
    ctx = stage_context(settings, None, _policy(), tmp_path / "w")  # type: ignore[arg-type]
    inputs = optimize.OptimizeInputs(tmp_path, "sha256:x", tmp_path / "o")
    verdict = run_stage(optimize.STAGE, ctx, inputs, failed)
    assert verdict.skipped and not verdict.passed
    assert verdict.reason == "not run: validate did not pass"


def test_compare_classifier_and_regressor_limits() -> None:
    from modelship.components.optimize.convert import NativeOutputs

    native = NativeOutputs(
        "classification",
        np.array([0, 1, 1, 0]),
        np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]]),
        (0, 1),
    )
    close = VariantOutputs(np.array([0, 1, 1, 0]), np.asarray(native.scores) + 1e-6)
    flipped = VariantOutputs(
        np.array([0, 1, 0, 0]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    )
    limits = Equivalence()
    assert all(c.passed for c in compare("v", native, close, limits))
    labels, probs = compare("v", native, flipped, limits)
    assert not labels.passed and labels.measured == 0.25
    assert not probs.passed and probs.measured == pytest.approx(0.2)
    reg = NativeOutputs("regression", np.array([100.0, 200.0]))
    abs_err, rel_err = compare(
        "r",
        reg,
        VariantOutputs(np.array([100.0, 200.01]), None),
        Equivalence(max_abs_error=0.1, max_rel_error=1e-5),
    )
    assert abs_err.passed and not rel_err.passed


def test_pytorch_mlp_converts_and_gets_int8_variants(settings: Settings, tmp_path: Path) -> None:
    """A PyTorch model saved the way MLflow 3.17 saves it by default (pt2, no pickle)."""
    import mlflow
    import torch
    from mlflow.models import infer_signature
    from sklearn.datasets import load_digits

    from modelship.registry.experiments import ensure_experiment

    digits = load_digits(as_frame=True)
    frame = (digits.data / 16.0).astype("float32")
    x = torch.tensor(frame.to_numpy())
    target = torch.tensor(digits.target.to_numpy())
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), target).backward()
        opt.step()
    example = frame.to_numpy()[:2]
    table = frame.assign(target=digits.target.to_numpy())
    registry = Registry()
    with mlflow.start_run(experiment_id=ensure_experiment(registry.client, settings, "tests")):
        info = mlflow.pytorch.log_model(
            net, name="model", input_example=example, registered_model_name="digits",
            signature=infer_signature(example, net(torch.tensor(example)).detach().numpy()),
        )  # fmt: skip
        from modelship.datasets import log_datasets

        log_datasets(table, table)
    ref = registry.resolve("digits", version=str(info.registered_model_version))
    model_dir, digest = registry.checked_download(ref, tmp_path / "model")
    assert not list(model_dir.rglob("*.pth"))  # pt2: nothing pickled
    policy = Policy.model_validate(
        {
            "validate": {"metrics": [{"name": "accuracy", "threshold": 0.8}]},
            "optimize": {
                "equivalence": {"max_label_disagreement": 0.01, "max_probability_diff": 0.05}
            },
        }
    )
    verdict = run_stage(
        optimize.STAGE, stage_context(settings, ref, policy, tmp_path / "work", registry),
        optimize.OptimizeInputs(model_dir, digest, tmp_path / "out"), PASSED,
    )  # fmt: skip
    assert verdict.passed, verdict.reason
    checks = _checks(verdict)
    assert checks["optimize.conversion"].measured == "torch.onnx (dynamo)"
    assert checks["variant.fp32.probabilities"].passed
    assert "variant.int8_dynamic.labels" in checks  # a Gemm graph: quantized and judged
    assert (tmp_path / "out" / "model.onnx").exists()


def _neighbour_busy_for(start: int, stop: int) -> tuple[dict[str, Any], list[str]]:
    """Two identical predicts sharing one call counter; calls ``start`` to ``stop`` (counted over
    both) each take 0.3 ms longer, as when a neighbour on the machine gets busy for a while."""
    import time

    count, order = [0], []

    def predict_as(name: str) -> Any:
        def predict(rows: Any) -> Any:
            if start <= count[0] < stop:
                until = time.perf_counter_ns() + 300_000
                while time.perf_counter_ns() < until:
                    pass
            count[0] += 1
            order.append(name)
            return rows

        return predict

    return {"a": predict_as("a"), "b": predict_as("b")}, order


def test_variants_are_timed_interleaved_so_a_busy_stretch_slows_them_alike() -> None:
    import itertools

    from modelship.components.optimize.timing import measure, side_by_side

    rows = np.zeros((50, 3), dtype=np.float32)
    # each: 100 warm-up calls, then ten turns of 10 untimed and 100 timed single rows (no
    # batches here); the busy stretch is 700 calls long, from 100 calls into the second
    # variant's turns when they are timed one after the other
    predicts, _ = _neighbour_busy_for(1400, 2100)
    one_then_other = {n: measure(p, rows, []) for n, p in predicts.items()}
    # timed one after the other, the stretch falls on b alone: b looks far slower than a
    assert one_then_other["b"].p50_us > 200 > one_then_other["a"].p50_us
    predicts, order = _neighbour_busy_for(1400, 2100)
    together = side_by_side(predicts, rows, [])
    # side by side, each got its calls in ten turns and the stretch moved neither p50
    turns = order[200:]
    assert turns.count("a") == turns.count("b") == 1100
    assert sum(x != y for x, y in itertools.pairwise(turns)) >= 10
    assert together["a"].p50_us < 200 and together["b"].p50_us < 200
