"""The optimize stage: convert, build variants, prove each equivalent, pick the fastest.

Takes the validation verdict and refuses to run without a passing one. Its output is the
chosen ONNX file with ``optimize.json`` beside it (input name, columns, classes, session
settings), which packaging serves; or, where no variant passed and the policy allows it, a
record that says to serve the native model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelship.components.contract import ModelInputs, Stage, StageContext
from modelship.components.datasource import read_frame
from modelship.components.mlmodel import (
    artifact_checks,
    model_inputs,
    read_mlmodel,
    read_signature,
)
from modelship.components.optimize import equivalence
from modelship.components.optimize.convert import INPUT_NAME, ConversionFailed, Converted, convert
from modelship.components.optimize.plot import latency_chart
from modelship.components.optimize.timing import Timing, measure
from modelship.components.optimize.variants import (
    SessionSettings,
    VariantFile,
    build_variants,
    open_session,
)
from modelship.core.errors import GateRejected
from modelship.core.records import OptimizeRecord
from modelship.core.tags import TAG_SPEEDUP, TAG_VARIANT
from modelship.core.verdict import Check, ModelState, Verdict
from modelship.policies.schema import Policy

NAME = "optimize"


@dataclass(frozen=True)
class VariantReport:
    variant: str
    status: str  # chosen, passed, failed, skipped, error
    detail: str
    timing: dict[str, float]


def _native_timing(model_dir: Path, features: pd.DataFrame, batch_sizes: list[int]) -> Timing:
    """MLflow pyfunc predict, the way `mlflow models serve` calls the model: the baseline."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(str(model_dir))
    return measure(
        model.predict, features, batch_sizes, calls=100, warmup=10,
        take=lambda data, start, n: data.iloc[start : start + n],
    )  # fmt: skip


def _try_variant(
    vf: VariantFile, converted: Converted, x: np.ndarray, y_true: np.ndarray, policy: Policy,
    settings: SessionSettings,
) -> tuple[list[Check], Any]:  # fmt: skip
    """Checks for one variant, and its session when it passed them all."""
    name = str(vf.variant)
    if vf.skipped:
        return [Check(name=f"variant.{name}.builds", kind="equivalence", passed=True, skipped=True,
                      blocking=False, reason=f"skipped: {vf.skipped}")], None  # fmt: skip
    if vf.error or vf.path is None:
        return [Check(name=f"variant.{name}.builds", kind="equivalence", passed=False, blocking=False,
                      reason=f"could not be built: {vf.error}")], None  # fmt: skip
    try:
        session = open_session(vf, settings)
        outputs = session.run(None, {INPUT_NAME: x})
    except Exception as e:  # a corrupt or unsupported graph: drop this variant, keep the others
        return [Check(name=f"variant.{name}.loads", kind="equivalence", passed=False, blocking=False,
                      reason=f"failed to load or run: {type(e).__name__}: {e}")], None  # fmt: skip
    got = equivalence.from_onnx(outputs, converted.native)
    checks = equivalence.compare(name, converted.native, got, policy.optimize.equivalence)
    checks += equivalence.metric_budget(
        name, policy.validate_stage.metrics, y_true, converted.native, got,
        policy.optimize.metric_budget, policy.validate_stage.positive_label,
    )  # fmt: skip
    return checks, session if all(c.passed for c in checks) else None


def _runner(session: Any) -> Callable[[Any], Any]:
    def run_rows(rows: Any) -> Any:
        return session.run(None, {INPUT_NAME: rows})

    return run_rows


def _pick(timings: dict[str, Timing], objective: str, batch_sizes: list[int]) -> str:
    if objective == "throughput":
        size = max(batch_sizes)
        return max(timings, key=lambda v: timings[v].rows_per_s[size])
    return min(timings, key=lambda v: timings[v].p50_us)


def _table(reports: list[VariantReport], native: Timing) -> str:
    sizes = sorted(native.rows_per_s)
    head = "| variant | status | p50 us | p99 us | " + " | ".join(f"rows/s @{b}" for b in sizes)
    lines = [head + " | detail |", "|" + " --- |" * (5 + len(sizes))]
    rows = [VariantReport("native (pyfunc)", "baseline", "", native.as_dict()), *reports]
    for r in rows:
        t = r.timing
        cells = [r.variant, r.status, str(t.get("p50_us", "")), str(t.get("p99_us", ""))]
        cells += [str(t.get(f"rows_per_s_{b}", "")) for b in sizes]
        lines.append("| " + " | ".join([*cells, r.detail]) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class OptimizeInputs(ModelInputs):
    #: where the chosen model (``model.onnx``) and its :class:`OptimizeRecord` go
    out_dir: Path


def run(ctx: StageContext, inputs: OptimizeInputs) -> Verdict:
    """Optimize ``ctx.ref``; write the chosen model and its record to ``inputs.out_dir``."""
    ref, registry, workdir, events, policy = (
        ctx.ref, ctx.registry, ctx.workdir, ctx.events, ctx.policy
    )  # fmt: skip
    model_dir, out_dir = inputs.model_dir, inputs.out_dir
    opt = policy.optimize
    mlmodel = read_mlmodel(model_dir)
    refused = [
        c for c in artifact_checks(model_dir, mlmodel, policy.validate_stage.model) if not c.passed
    ]
    if refused:  # validation refused it too; never load it here either
        raise GateRejected(f"{ref}: {refused[0].reason}")
    signature = read_signature(mlmodel)
    context = {"run_id": ref.run_id or "", "model": ref.name, "version": ref.version}
    vp = policy.validate_stage
    validation = read_frame(vp.validation_data.uri, vp.validation_data.format, context)
    reference = read_frame(vp.reference_data.uri, vp.reference_data.format, context)
    features = model_inputs(validation, signature, vp.validation_data.target)
    y_true = validation[vp.validation_data.target].to_numpy()
    x = features.to_numpy(np.float32)
    calibration = model_inputs(reference, signature, vp.validation_data.target).to_numpy(
        np.float32
    )[:512]
    settings = SessionSettings(intra_op_threads=opt.intra_op_threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)

    events.emit(NAME, "step", step="native pyfunc baseline")
    native_timing = _native_timing(model_dir, features, opt.batch_sizes)
    checks: list[Check] = []
    reports: list[VariantReport] = []
    timings: dict[str, Timing] = {}
    events.emit(NAME, "step", step="convert to ONNX")
    try:
        converted: Converted | None = convert(model_dir, mlmodel, features)
        checks.append(Check(name="optimize.conversion", kind="conversion", passed=True,
                            measured=converted.converter if converted else None,
                            reason=f"{ref} converted to ONNX with {converted.converter if converted else ''}"))  # fmt: skip
    except ConversionFailed as e:
        converted = None
        checks.append(Check(name="optimize.conversion", kind="conversion", passed=False, blocking=False,
                            reason=e.message))  # fmt: skip
    if converted is not None:
        events.emit(NAME, "step", step=f"variants: {', '.join(map(str, opt.variants))}")
        for vf in build_variants(
            converted.onnx_bytes, list(opt.variants), workdir / "variants", calibration
        ):
            events.emit(NAME, "step", step=f"equivalence and timing: {vf.variant}")
            found, session = _try_variant(vf, converted, x, y_true, policy, settings)
            checks += found
            if session is None:
                failed = [c.reason for c in found if not c.passed or c.skipped]
                status = "skipped" if vf.skipped else "failed"
                reports.append(VariantReport(str(vf.variant), status, "; ".join(failed)[:200], {}))
                continue
            timing = measure(_runner(session), x, opt.batch_sizes)
            timings[str(vf.variant)] = timing
            reports.append(VariantReport(str(vf.variant), "passed", "equivalent", timing.as_dict()))

    figures: dict[str, float] = {f"native.{k}": v for k, v in native_timing.as_dict().items()}
    common: dict[str, Any] = {"session": asdict(settings), "batch_sizes": opt.batch_sizes}
    if timings:
        chosen = _pick(timings, opt.objective, opt.batch_sizes)
        best = timings[chosen]
        speedup = native_timing.p50_us / best.p50_us
        size = max(opt.batch_sizes)
        batch_speedup = best.rows_per_s[size] / native_timing.rows_per_s[size]
        vf_path = workdir / "variants" / f"{chosen}.onnx"
        (out_dir / "model.onnx").write_bytes(vf_path.read_bytes())
        reports = [
            VariantReport(
                r.variant, "chosen" if r.variant == chosen else r.status, r.detail, r.timing
            )
            for r in reports
        ]
        figures.update(
            {f"{v}.{k}": val for v, t in timings.items() for k, val in t.as_dict().items()}
        )
        figures.update({"speedup_p50": speedup, f"speedup_batch_{size}": batch_speedup})
        assert converted is not None
        record = OptimizeRecord(
            variant=chosen, input_name=INPUT_NAME, columns=[c for c, _ in signature.columns],
            task=converted.native.task, classes=list(converted.native.classes),
            p50_us=best.p50_us, speedup_p50=speedup, objective=opt.objective, **common,
        )  # fmt: skip
        checks.append(Check(
            name="optimize.selection", kind="selection", passed=True, measured=chosen,
            threshold=f"best {opt.objective}",
            reason=f"{chosen}: p50 {best.p50_us:.1f} us, {speedup:.0f}x faster than pyfunc predict "
            f"for one row, {batch_speedup:.1f}x at batch {size}",
        ))  # fmt: skip
    elif opt.on_conversion_failure == "native":
        record = OptimizeRecord(
            variant="native", reason="no ONNX variant passed; serving the native model", **common
        )
        checks.append(Check(name="optimize.selection", kind="selection", passed=True, measured="native",
                            reason="no ONNX variant passed; the policy says serve the native model"))  # fmt: skip
    else:
        record = OptimizeRecord(variant="none", reason="no ONNX variant passed", **common)
        checks.append(Check(name="optimize.selection", kind="selection", passed=False,
                            reason="no ONNX variant passed and optimize.on_conversion_failure is reject"))  # fmt: skip
    record.save(out_dir)
    verdict = Verdict.from_checks(NAME, checks, figures=figures)
    table = _table(reports, native_timing)
    (workdir / "variants.md").write_text(table + "\n")
    chart = latency_chart(
        {"native (pyfunc)": native_timing.p50_us, **{v: t.p50_us for v, t in timings.items()}},
        {"native (pyfunc)": native_timing.p99_us, **{v: t.p99_us for v, t in timings.items()}},
        record.variant if timings else None,
        workdir / "latency.png",
    )
    if verdict.passed:
        registry.set_tag(ref, TAG_VARIANT, record.variant)
        if record.speedup_p50 is not None:
            registry.set_tag(ref, TAG_SPEEDUP, f"{record.speedup_p50:.0f}x p50 vs pyfunc")
    if (deployment := ctx.deployment) is not None:
        deployment.log_text(table, "optimize/variants.md")
        deployment.log_file(chart, "optimize")
        deployment.log_text(record.model_dump_json(indent=2), "optimize/optimize.json")
    return verdict


STAGE: Stage[OptimizeInputs] = Stage(NAME, ModelState.OPTIMIZED, run)
