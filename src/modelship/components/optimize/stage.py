"""The optimize stage: convert, build variants, prove each equivalent, pick the fastest.

Takes the validation verdict and refuses to run without a passing one. Its output is the
chosen ONNX file with ``optimize.json`` beside it (input name, columns, classes, session
settings), which packaging serves; or, where no variant passed and the policy allows it, a
record that says to serve the native model. Where the policy asks for approximate variants
(``optimize.approximate``), they are judged by its metric budget and timed beside the exact
ones; one is chosen only when it is clearly faster (:func:`budget.choose`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
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
from modelship.components.optimize import approximate
from modelship.components.optimize.approximation import Original, Rows
from modelship.components.optimize.budget import Budget, Choice, choose, describe_drops, score
from modelship.components.optimize.convert import (
    INPUT_NAME,
    ConversionFailed,
    Converted,
    convert,
    load_unconverted,
    predict_native,
)
from modelship.components.optimize.gate import try_variant
from modelship.components.optimize.plot import latency_chart
from modelship.components.optimize.timing import Timing, measure, side_by_side
from modelship.components.optimize.variants import SessionSettings, build_variants
from modelship.core.errors import GateRejected
from modelship.core.records import OptimizeRecord
from modelship.core.tags import TAG_SPEEDUP, TAG_VARIANT
from modelship.core.verdict import Check, ModelState, Verdict
from modelship.policies.schema import Variant

NAME = "optimize"
#: the variant that serves the MLflow model itself, as `mlflow models serve` would
NATIVE = "native"
#: how the native model is named in the table and the chart
_BASELINE = "native (pyfunc)"


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


def _runner(session: Any) -> Callable[[Any], Any]:
    def run_rows(rows: Any) -> Any:
        return session.run(None, {INPUT_NAME: rows})

    return run_rows


def _unconverted(
    model_dir: Path, mlmodel: dict[str, Any], features: pd.DataFrame
) -> tuple[Original | None, list[Check]]:
    """The original that did not convert, loaded to teach a student; or why it cannot."""
    try:
        model, flavor = load_unconverted(model_dir, mlmodel)
        native = predict_native(model, flavor, features)
    except Exception as e:  # a model that will not load or predict here: nothing to teach from
        return None, [Check(name="optimize.approximate", kind="approximation", passed=True,
                            skipped=True, blocking=False,
                            reason="skipped: the original did not convert to ONNX and could not "
                            f"be loaded to teach a student: {type(e).__name__}: {e}")]  # fmt: skip
    size = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    return Original(model, flavor, native, size, "saved model files", converted=False), []


def _approximate_figures(
    judged: list[approximate.Judged], timings: dict[str, Timing], exact: dict[str, Timing],
    objective: str, size: int,
) -> dict[str, float]:  # fmt: skip
    """Each approximate variant's metric drops, sizes and (where timed) its objective against
    the best exact variant's (the native model's where none converted): the cost in accuracy
    beside the gain in speed."""
    figures: dict[str, float] = {}
    best = max((score(t, objective, size) for t in exact.values()), default=None)
    for j in judged:
        figures.update({f"{j.variant}.drop.{m}": round(d, 6) for m, d in j.drops.items()})
        figures.update({f"{j.variant}.{k}": v for k, v in j.figures.items()})
        if j.variant in timings and best is not None:
            gain = score(timings[j.variant], objective, size) / best
            figures[f"{j.variant}.gain_vs_exact"] = round(gain, 3)
    return figures


def _approximate_check(
    judged: list[approximate.Judged], chosen: str, choice: Choice | None
) -> Check:
    """What became of the approximate variants, in one line for the verdict."""
    within = [j.variant for j in judged if j.session is not None]
    if not within:
        why = "; ".join(f"{j.variant}: {j.detail}" for j in judged)
        return Check(name="optimize.approximate", kind="approximation", passed=True,
                     blocking=False, measured=0,
                     reason=f"no approximate variant stayed within the budget, so {chosen} is "
                     f"chosen as without them ({why})"[:1000])  # fmt: skip
    why = choice.reason if choice is not None and choice.reason else f"{chosen} chosen"
    return Check(name="optimize.approximate", kind="approximation", passed=True, blocking=False,
                 measured=len(within), reason=f"within the budget: {', '.join(within)}; {why}")  # fmt: skip


def _table(reports: list[VariantReport], native: Timing) -> str:
    sizes = sorted(native.rows_per_s)
    head = "| variant | status | p50 us | p99 us | " + " | ".join(f"rows/s @{b}" for b in sizes)
    lines = [head + " | detail |", "|" + " --- |" * (5 + len(sizes))]
    rows = [VariantReport(_BASELINE, "baseline", "", native.as_dict()), *reports]
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
    reference_features = model_inputs(reference, signature, vp.validation_data.target)
    calibration = reference_features.to_numpy(np.float32)[:512]
    settings = SessionSettings(intra_op_threads=opt.intra_op_threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)

    events.emit(NAME, "step", step="native pyfunc baseline")
    native_timing = _native_timing(model_dir, features, opt.batch_sizes)
    checks: list[Check] = []
    reports: list[VariantReport] = []
    timings: dict[str, Timing] = {}
    judged: list[approximate.Judged] = []
    choice: Choice | None = None
    paths: dict[str, Path] = {}
    sessions: dict[str, Any] = {}  # every variant that passed its gate: timed together below
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
    original: Original | None = None
    if converted is not None:
        original = Original.of(converted)
        events.emit(NAME, "step", step=f"variants: {', '.join(map(str, opt.variants))}")
        for vf in build_variants(
            converted.onnx_bytes, list(opt.variants), workdir / "variants", calibration
        ):
            events.emit(NAME, "step", step=f"equivalence: {vf.variant}")
            found, session = try_variant(vf, converted.native, x, y_true, policy, settings)
            checks += found
            if session is None:
                failed = [c.reason for c in found if not c.passed or c.skipped]
                status = "skipped" if vf.skipped else "failed"
                reports.append(VariantReport(str(vf.variant), status, "; ".join(failed)[:200], {}))
                continue
            assert vf.path is not None
            sessions[str(vf.variant)], paths[str(vf.variant)] = session, vf.path
            reports.append(VariantReport(str(vf.variant), "passed", "equivalent", {}))
    elif opt.approximate.kinds:
        original, unloaded = _unconverted(model_dir, mlmodel, features)
        checks += unloaded
    if original is not None and opt.approximate.kinds:
        target = vp.validation_data.target
        events.emit(NAME, "step", step=f"approximate: {', '.join(map(str, opt.approximate.kinds))}")
        outcome = approximate.run(
            original,
            Rows(
                features, reference_features,
                reference[target].to_numpy() if target in reference.columns else None,
                Budget(dict(opt.approximate.max_metric_drop), y_true, original.native,
                       vp.positive_label),
            ),
            opt.approximate, workdir, calibration, settings,
            # the policy's exact int8 variant, on each smaller model too
            quantize=Variant.INT8_DYNAMIC in opt.variants,
            step=lambda step: events.emit(NAME, "step", step=step),
        )  # fmt: skip
        checks += outcome.checks
        for j in outcome.judged:
            judged.append(j)
            checks += j.checks
            if j.session is None or j.path is None:
                status = "skipped" if j.skipped else "failed"
                reports.append(VariantReport(j.variant, status, j.detail, {}))
                continue
            sessions[j.variant], paths[j.variant] = j.session, j.path
            reports.append(VariantReport(j.variant, "passed", j.detail, {}))
    if sessions:
        events.emit(NAME, "step", step=f"timing side by side: {', '.join(sessions)}")
        timings = side_by_side({v: _runner(s) for v, s in sessions.items()}, x, opt.batch_sizes)
        reports = [replace(r, timing=timings[r.variant].as_dict()) if r.variant in timings else r
                   for r in reports]  # fmt: skip

    figures: dict[str, float] = {f"native.{k}": v for k, v in native_timing.as_dict().items()}
    common: dict[str, Any] = {"session": asdict(settings), "batch_sizes": opt.batch_sizes}
    size = max(opt.batch_sizes)
    if timings:
        within = {j.variant for j in judged if j.session is not None}
        exact = {v: t for v, t in timings.items() if v not in within}
        if not exact and opt.on_conversion_failure == "native":
            # what would be served without the approximations: the student must beat it
            exact = {NATIVE: native_timing}
        choice = choose(
            exact, {v: timings[v] for v in within}, opt.objective, size, opt.approximate.min_gain
        )
        figures.update(_approximate_figures(judged, timings, exact, opt.objective, size))
    if choice is not None and choice.variant != NATIVE:
        assert original is not None
        chosen = choice.variant
        best = timings[chosen]
        speedup = native_timing.p50_us / best.p50_us
        batch_speedup = best.rows_per_s[size] / native_timing.rows_per_s[size]
        (out_dir / "model.onnx").write_bytes(paths[chosen].read_bytes())
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
        cost = next((j for j in judged if j.variant == chosen and choice.approximate), None)
        record = OptimizeRecord(
            variant=chosen, input_name=INPUT_NAME, columns=[c for c, _ in signature.columns],
            task=original.native.task, classes=list(original.native.classes),
            p50_us=best.p50_us, speedup_p50=speedup, objective=opt.objective,
            approximate=cost is not None, approximation=cost.kept if cost else "",
            metric_drop={str(m): d for m, d in cost.drops.items()} if cost else {}, **common,
        )  # fmt: skip
        paid = f"; approximate, {describe_drops(cost.drops)} against the original" if cost else ""
        checks.append(Check(
            name="optimize.selection", kind="selection", passed=True, measured=chosen,
            threshold=f"best {opt.objective}" + (
                f", approximate only above {1 + opt.approximate.min_gain:.2f}x the best exact"
                if opt.approximate.kinds else ""
            ),
            reason=f"{chosen}: p50 {best.p50_us:.1f} us, {speedup:.0f}x faster than pyfunc predict "
            f"for one row, {batch_speedup:.1f}x at batch {size}{paid}",
        ))  # fmt: skip
    elif opt.on_conversion_failure == "native":
        why = "no ONNX variant passed" if choice is None else choice.reason
        record = OptimizeRecord(variant=NATIVE, reason=f"{why}; serving the native model", **common)
        checks.append(Check(name="optimize.selection", kind="selection", passed=True, measured=NATIVE,
                            reason=f"{why}; the policy says serve the native model"))  # fmt: skip
    else:
        record = OptimizeRecord(variant="none", reason="no ONNX variant passed", **common)
        checks.append(Check(name="optimize.selection", kind="selection", passed=False,
                            reason="no ONNX variant passed and optimize.on_conversion_failure is reject"))  # fmt: skip
    if judged:
        checks.append(_approximate_check(judged, record.variant, choice))
    record.save(out_dir)
    verdict = Verdict.from_checks(NAME, checks, figures=figures)
    table = _table(reports, native_timing)
    (workdir / "variants.md").write_text(table + "\n")
    chart = latency_chart(
        {_BASELINE: native_timing.p50_us, **{v: t.p50_us for v, t in timings.items()}},
        {_BASELINE: native_timing.p99_us, **{v: t.p99_us for v, t in timings.items()}},
        _BASELINE if record.variant == NATIVE else record.variant if timings else None,
        workdir / "latency.png",
    )
    if verdict.passed:
        registry.set_tag(ref, TAG_VARIANT, record.variant)
        if record.speedup_p50 is not None:
            registry.set_tag(ref, TAG_SPEEDUP, f"{record.speedup_p50:.0f}x p50 vs pyfunc")
    if (deployment := ctx.deployment) is not None:
        if opt.approximate.kinds:
            # tags, not params: a retried step may choose differently, and params never change
            deployment.set_tags({
                "modelship.optimize.variant": record.variant,
                "modelship.optimize.metric_drop": describe_drops(record.metric_drop) or "none (exact)",
            })  # fmt: skip
        deployment.log_text(table, "optimize/variants.md")
        deployment.log_file(chart, "optimize")
        deployment.log_text(record.model_dump_json(indent=2), "optimize/optimize.json")
    return verdict


STAGE: Stage[OptimizeInputs] = Stage(NAME, ModelState.OPTIMIZED, run)
