"""The optimize stage's GPU variants (fp16, CUDA, TensorRT) against its CPU ones, on one machine.

    .venv/bin/python benchmarks/gpu.py prepare .gpu/cases        # models, ONNX graphs, rows
    .venv/bin/python benchmarks/gpu.py run .gpu/cases --out OUT  # variants, gate, timings

``prepare`` runs where modelship is installed: it trains the demo's random forest (the demo's
split) and a PyTorch MLP 64-256-128-10 (scikit-learn's digits, as ``benchmarks/optimize.py``),
converts each with the optimize stage's own converters, and writes per case the ONNX graph, the
validation rows, what the native model said about them, and calibration rows.

``run`` needs only numpy, onnx, onnxruntime, pydantic and modelship (no MLflow, no converters),
so it runs on a GPU machine with nothing installed but those: ``benchmarks/gpu.sh`` is the
command for such a machine, ``make gpu-bundle`` what it needs carried (see docs/gpu.md). Per
case it builds the variants with the stage's ``build_variants`` (fp32 on the CPU; cuda, fp16
and tensorrt where ONNX Runtime has the provider), puts each through the stage's
equivalence gate (``gate.try_variant``: labels, probabilities and the policy's metrics against the
native model), times each that passes with the stage's ``measure`` (single-row p50/p99, rows/s at
1, 64, 1,024 and 16,384 rows), and counts on which execution provider each graph node ran
(ONNX Runtime's profiler: a GPU session can leave nodes on the CPU, tree ensembles in
particular). Writes ``gpu.json`` and ``gpu.md`` to ``--out`` and prints the table. On a machine
with no GPU the GPU variants are skipped with the reason and the rest still runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BATCHES = [1, 64, 1024, 16384]
#: the variants tried, in this order; the GPU ones are skipped where there is no provider. The
#: CPU's int8 variants are measured by benchmarks/optimize.py: the bundle has no quantizer
VARIANTS = ["fp32", "cuda", "fp16", "tensorrt"]
CASES = {
    "forest": "the demo's random forest (breast_cancer)",
    "torch_mlp": "PyTorch MLP 64-256-128-10 (digits)",
}


# -- prepare: where modelship is installed ------------------------------------------------------


def _cases() -> dict[str, tuple[Any, str, Any, Any, Any]]:
    """name: (model, flavor, validation features, validation labels, reference features)."""
    import pandas as pd
    from optimize import _torch_mlp  # benchmarks/optimize.py: the same MLP, trained the same way
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from modelship.demo import split, train_model

    x_train, y_train, reference, validation = split()
    forest = train_model("forest", x_train, y_train["target"])
    digits = load_digits(as_frame=True)
    dt, dv, dyt, dyv = train_test_split(
        (digits.data / 16.0).astype("float32"), digits.target, test_size=0.3, random_state=0
    )
    mlp = _torch_mlp(dt, dyt).eval()
    return {
        "forest": (forest, "sklearn", validation.drop(columns="target"), validation["target"],
                   reference.drop(columns="target")),
        "torch_mlp": (mlp, "pytorch", pd.DataFrame(dv), dyv, pd.DataFrame(dt)),
    }  # fmt: skip


def prepare(folder: Path) -> None:
    from modelship.components.optimize.convert import convert_model

    for name, (model, flavor, x, y, ref) in _cases().items():
        converted = convert_model(model, flavor, x)
        native = converted.native
        case = folder / name
        case.mkdir(parents=True, exist_ok=True)
        (case / "model.onnx").write_bytes(converted.onnx_bytes)
        np.savez(
            case / "rows.npz", x=x.to_numpy(np.float32), y=np.asarray(y),
            values=native.values, scores=native.scores if native.scores is not None else np.empty(0),
            classes=np.asarray(native.classes), calibration=ref.to_numpy(np.float32)[:512],
        )  # fmt: skip
        meta = {"name": name, "about": CASES[name], "task": native.task,
                "converter": converted.converter, "columns": list(map(str, x.columns))}  # fmt: skip
        (case / "case.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(f"{name}: {len(converted.onnx_bytes):,} bytes of ONNX, {len(x)} validation rows")


# -- run: anywhere with numpy, onnx, onnxruntime, pydantic and modelship ---------------------------


def _policy(task: str, classes: int) -> Any:
    """The demo's policy; for a model of more than two classes, accuracy is its one metric."""
    from modelship.policies.loader import load_policy
    from modelship.policies.schema import Policy

    policy = load_policy("breast-cancer").policy
    if classes <= 2:
        return policy
    data = policy.model_dump(by_alias=True)
    data["validate"]["metrics"] = [{"name": "accuracy", "threshold": 0.5}]
    return Policy.model_validate(data)


def _placement(path: Path, providers: tuple[str, ...], x: np.ndarray) -> dict[str, int]:  # type: ignore[type-arg]
    """How many of the graph's nodes ran on each execution provider, from ONNX Runtime's
    profiler (one run of the validation rows)."""
    import onnxruntime as ort

    from modelship.components.optimize.convert import INPUT_NAME

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.log_severity_level = 3
    so.profile_file_prefix = str(path.parent / f"profile-{path.stem}")
    session = ort.InferenceSession(str(path), so, providers=list(providers))
    session.run(None, {INPUT_NAME: x})
    trace = json.loads(Path(session.end_profiling()).read_text())
    nodes: dict[str, set[str]] = {}
    for event in trace:
        provider = (event.get("args") or {}).get("provider")
        if event.get("cat") == "Node" and provider:
            nodes.setdefault(provider, set()).add(event["name"].removesuffix("_kernel_time"))
    return {provider: len(names) for provider, names in sorted(nodes.items())}


def _environment() -> dict[str, Any]:
    import onnxruntime as ort

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "machine": platform.machine(),
    }
    try:
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        env["gpus"] = smi.stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        env["gpus"] = []
    try:
        libs = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=20)
        env["tensorrt_libs"] = sorted({
            line.split()[0] for line in libs.stdout.splitlines() if "libnvinfer" in line
        })  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        env["tensorrt_libs"] = []
    return env


def _one_case(case: Path, work: Path) -> list[dict[str, Any]]:
    from modelship.components.optimize.convert import INPUT_NAME, NativeOutputs
    from modelship.components.optimize.gate import try_variant
    from modelship.components.optimize.timing import side_by_side
    from modelship.components.optimize.variants import SessionSettings, build_variants
    from modelship.policies.schema import Variant

    meta = json.loads((case / "case.json").read_text())
    rows = np.load(case / "rows.npz")
    x, y = rows["x"], rows["y"]
    scores = rows["scores"] if rows["scores"].size else None
    native = NativeOutputs(meta["task"], rows["values"], scores, tuple(rows["classes"].tolist()))
    policy = _policy(meta["task"], len(native.classes))
    settings = SessionSettings()
    out = []
    sessions: dict[str, Any] = {}
    for vf in build_variants(
        (case / "model.onnx").read_bytes(), [Variant(v) for v in VARIANTS], work / case.name,
        rows["calibration"],
    ):  # fmt: skip
        started = time.perf_counter()
        checks, session = try_variant(vf, native, x, y, policy, settings)
        result: dict[str, Any] = {
            "case": meta["name"], "about": meta["about"], "variant": str(vf.variant),
            "providers": list(vf.providers), "passed": session is not None,
            "checks": [{"name": c.name, "passed": c.passed, "skipped": c.skipped,
                        "reason": c.reason} for c in checks],
        }  # fmt: skip
        if session is not None:
            assert vf.path is not None
            result["got_providers"] = session.get_providers()
            result["nodes"] = _placement(vf.path, vf.providers, x)
            sessions[str(vf.variant)] = session
        result["seconds"] = round(time.perf_counter() - started, 2)
        print(f"  {meta['name']} {vf.variant}: {_status(result)}", flush=True)
        out.append(result)
    # timed as the stage times them: side by side, interleaved, on the same rows
    runners = {v: (lambda r, s=s: s.run(None, {INPUT_NAME: r})) for v, s in sessions.items()}
    timings = side_by_side(runners, x, BATCHES)
    for result in out:
        if result["variant"] in timings:
            result["timing"] = timings[result["variant"]].as_dict()
    return out


def _status(result: dict[str, Any]) -> str:
    if result["passed"]:
        return "passed the gate"
    failed = [c["reason"] for c in result["checks"] if not c["passed"] or c["skipped"]]
    return "; ".join(failed)[:300]


def _table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | variant | gate | p50 us | p99 us | "
        + " | ".join(f"rows/s @{b}" for b in BATCHES)
        + " | nodes by provider |",
        "|" + " --- |" * (5 + len(BATCHES) + 1),
    ]
    for r in results:
        t = r.get("timing", {})
        nodes = ", ".join(
            f"{p.removesuffix('ExecutionProvider')} {n}" for p, n in r.get("nodes", {}).items()
        )
        cells = [r["about"], r["variant"], _status(r)[:120], str(t.get("p50_us", "")),
                 str(t.get("p99_us", ""))]  # fmt: skip
        cells += [str(t.get(f"rows_per_s_{b}", "")) for b in BATCHES]
        lines.append("| " + " | ".join([*cells, nodes]) + " |")
    return "\n".join(lines)


def run(folder: Path, out: Path) -> int:
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    env = _environment()
    if "CUDAExecutionProvider" in env["providers"]:
        try:  # PyTorch loads the CUDA 13 libraries it was built with into this process
            import torch

            env["torch_cuda"] = torch.cuda.is_available() and torch.cuda.get_device_name(0)
        except (
            Exception
        ) as e:  # no PyTorch: ONNX Runtime's own search below, and the variants say why
            env["torch_cuda"] = f"{type(e).__name__}: {e}"
        if hasattr(ort, "preload_dlls"):
            try:  # CUDA and cuDNN from the nvidia-* wheels, where ONNX Runtime looks for them
                ort.preload_dlls()
            except Exception as e:  # the CUDA variants then say why they did not load
                env["preload_dlls"] = f"{type(e).__name__}: {e}"
    print(json.dumps(env, indent=2), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for case in sorted(p for p in folder.iterdir() if (p / "case.json").exists()):
        results += _one_case(case, out / "work")
    table = _table(results)
    (out / "gpu.json").write_text(json.dumps({"environment": env, "results": results}, indent=2))
    (out / "gpu.md").write_text(table + "\n")
    print(table)
    return 0 if results else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="train, convert and write the cases")
    p.add_argument("folder", type=Path)
    r = sub.add_parser("run", help="build, gate and time every variant of every case")
    r.add_argument("folder", type=Path)
    r.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.folder)
        return 0
    return run(args.folder, args.out)


if __name__ == "__main__":
    sys.exit(main())
