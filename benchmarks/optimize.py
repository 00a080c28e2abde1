"""Native MLflow pyfunc predict against each ONNX Runtime variant the optimize stage builds.

    .venv/bin/python benchmarks/optimize.py [--repeats 3] [--budget 0.01]

Models: a RandomForest of 200 trees (breast_cancer), LightGBM (breast_cancer), and a small MLP
(scikit-learn's digits) in scikit-learn and in PyTorch. For each: single-row p50/p99 and
batch-1024 rows/s, the median over ``--repeats`` measurements, all in this one process, every
ONNX Runtime session of a model timed side by side (interleaved, as the stage times its
variants; MLflow pyfunc, 10 to 1,000 times slower here, on its own); plus a bare ONNX Runtime
session on the converted graph (default session options) as the reference the stage's choice
should come close to. Then the approximate variants the stage can build (ensemble pruning,
structured pruning, distillation; an accuracy drop of at most ``--budget``, each size searched
and judged on the validation rows as the stage splits them, the training rows as reference data), timed the same way, and once, for the scikit-learn MLP, unstructured sparsity (80% of each layer's weights zeroed) to
show what it does not buy on ONNX Runtime's CPU kernels. Each approximation within the budget is
also quantized to INT8 (dynamic) and judged by the same budget. Last, a Pipeline with no ONNX
converter, served as MLflow pyfunc, against the distilled students that replace it. Ratios are
printed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelship.components.mlmodel import read_mlmodel
from modelship.components.optimize import approximate
from modelship.components.optimize.approximation import Original, Rows
from modelship.components.optimize.budget import Budget
from modelship.components.optimize.convert import INPUT_NAME, Converted, convert, convert_model
from modelship.components.optimize.timing import Timing, measure, side_by_side
from modelship.components.optimize.variants import SessionSettings, build_variants, open_session
from modelship.policies.schema import Approximate, ApproximationKind, MetricName, Variant

BATCH = 1024


Frame = pd.DataFrame
Labels = pd.Series  # type: ignore[type-arg]


def _models() -> list[tuple[str, Any, Frame, Labels, str, Frame, Labels]]:
    import lightgbm as lgb
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    xt, xv, yt, yv = train_test_split(x, y, test_size=0.3, random_state=0)
    digits = load_digits(as_frame=True)
    split = train_test_split(digits.data / 16.0, digits.target, test_size=0.3, random_state=0)
    dt, dv, dyt, dyv = split
    forest = RandomForestClassifier(200, random_state=0).fit(xt, yt)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 31}
    booster = lgb.train(params, lgb.Dataset(xt, yt), 200)
    mlp = MLPClassifier((256, 128), solver="lbfgs", max_iter=300, random_state=0).fit(dt, dyt)
    torch_mlp = _torch_mlp(dt, dyt)
    # timed and scored on held-out rows; the training rows are the approximations' reference
    return [
        ("random forest, 200 trees", forest, xv, yv, "sklearn", xt, yt),
        ("LightGBM, 200 rounds", booster, xv, yv, "lightgbm", xt, yt),
        ("MLP 64-256-128-10 (digits)", mlp, dv, dyv, "sklearn", dt, dyt),
        ("PyTorch MLP 64-256-128-10 (digits)", torch_mlp, dv.astype("float32"), dyv, "pytorch",
         dt.astype("float32"), dyt),
    ]  # fmt: skip


def _torch_mlp(x: pd.DataFrame, y: pd.Series) -> Any:  # type: ignore[type-arg]
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )  # fmt: skip
    features, target = torch.tensor(x.to_numpy(np.float32)), torch.tensor(y.to_numpy())
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(features), target).backward()
        opt.step()
    return net


def _save(model: Any, x: pd.DataFrame, flavor: str, folder: Path) -> Path:
    import mlflow.lightgbm
    import mlflow.sklearn
    from mlflow.models import infer_signature

    path = folder / "model"
    if flavor == "pytorch":
        import mlflow.pytorch
        import torch

        example = x.to_numpy(np.float32)[:2]
        out = model(torch.tensor(example)).detach().numpy()
        mlflow.pytorch.save_model(
            model, str(path), input_example=example, signature=infer_signature(example, out)
        )
        return path
    signature = infer_signature(x, model.predict(x.head(5)))
    if flavor == "lightgbm":
        mlflow.lightgbm.save_model(model, str(path), signature=signature)
    else:
        mlflow.sklearn.save_model(
            model, str(path), signature=signature, skops_trusted_types=["sklearn.tree._tree.Tree"]
        )
    return path


def _median(timings: list[Timing]) -> dict[str, float]:
    return {
        "p50_us": statistics.median(t.p50_us for t in timings),
        "p99_us": statistics.median(t.p99_us for t in timings),
        "rows_per_s": statistics.median(t.rows_per_s[BATCH] for t in timings),
    }


def _accuracy(session: Any, x: np.ndarray, y: np.ndarray, classes: tuple[Any, ...]) -> float:  # type: ignore[type-arg]
    scores = session.run(None, {INPUT_NAME: x})[1]
    return float(np.mean(np.asarray(classes)[np.argmax(scores, axis=1)] == y))


def _timed(sessions: dict[str, Any], xs: np.ndarray, repeats: int) -> dict[str, dict[str, float]]:  # type: ignore[type-arg]
    """Every session timed side by side, ``repeats`` times; the median of each figure."""
    runners = {
        label: (lambda r, s=session: s.run(None, {INPUT_NAME: r}))
        for label, session in sessions.items()
    }
    runs = [side_by_side(runners, xs, [BATCH]) for _ in range(repeats)]
    return {label: _median([run[label] for run in runs]) for label in sessions}


def _approximations(
    converted: Converted, x: Frame, y: Labels, xt: Frame, yt: Labels, budget: float,
    workdir: Path,
) -> tuple[dict[str, Any], dict[str, float], list[str]]:  # fmt: skip
    """Each approximate variant within the budget: its session (to be timed beside the exact
    ones), its accuracy, and what each kept (or why there is none)."""
    xs = x.to_numpy(np.float32)
    limits = {MetricName.ACCURACY: budget}
    policy = Approximate(kinds=list(ApproximationKind), max_metric_drop=limits)
    (workdir / "variants").mkdir(parents=True, exist_ok=True)
    sessions: dict[str, Any] = {}
    accuracy: dict[str, float] = {}
    original = Original.of(converted)
    outcome = approximate.run(
        original, Rows(x, xt, np.asarray(yt), Budget(limits, np.asarray(y), converted.native)),
        policy, workdir, xt.to_numpy(np.float32)[:512], SessionSettings(), quantize=True,
    )  # fmt: skip
    notes = [outcome.held_out.reason]
    for each in outcome.judged:
        notes.append(f"{each.variant}: {each.detail}")
        if each.session is None:
            continue
        label = f"approximate {each.variant}"
        sessions[label] = each.session
        accuracy[label] = _accuracy(each.session, xs, np.asarray(y), original.native.classes)
    return sessions, accuracy, notes


def _unconvertible(budget: float, repeats: int) -> tuple[list[str], str, list[str]]:
    """A scikit-learn Pipeline skl2onnx has no converter for (log1p in a FunctionTransformer),
    served as MLflow pyfunc, against the distilled students that replace it."""
    import mlflow.pyfunc
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    from modelship.components.optimize.convert import load_unconverted, predict_native

    name = "log1p + logistic regression (no converter)"
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    xt, xv, yt, yv = train_test_split(x, y, test_size=0.3, random_state=0)
    steps = [FunctionTransformer(np.log1p), StandardScaler(), LogisticRegression(max_iter=1000)]
    model = make_pipeline(*steps).fit(xt, yt)
    lines, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = _save(model, xt, "sklearn", Path(tmp))
        teacher, flavor = load_unconverted(path, read_mlmodel(path))
        native = predict_native(teacher, flavor, xv)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        original = Original(teacher, flavor, native, size, "saved model files", converted=False)
        limits = {MetricName.ACCURACY: budget}
        policy = Approximate(kinds=[ApproximationKind.DISTILLATION], max_metric_drop=limits)
        pyfunc = mlflow.pyfunc.load_model(str(path))
        take = lambda d, s, n: d.iloc[s : s + n]  # noqa: E731
        base = _median(
            [
                measure(pyfunc.predict, xv, [BATCH], calls=200, warmup=20, take=take)
                for _ in range(repeats)
            ]
        )
        native_acc = float(np.mean(native.values == np.asarray(yv)))
        lines.append(
            f"| {name} | MLflow pyfunc predict | {base['p50_us']:.1f} | {base['p99_us']:.1f} | {base['rows_per_s']:,.0f} | {native_acc:.4f} |"
        )
        ratio = name
        xs, work = xv.to_numpy(np.float32), Path(tmp) / "a"
        (work / "variants").mkdir(parents=True)
        outcome = approximate.run(
            original, Rows(xv, xt, np.asarray(yt), Budget(limits, np.asarray(yv), native)),
            policy, work, xs[:512], SessionSettings(), quantize=False,
        )  # fmt: skip
        notes.append(f"{name}: {outcome.held_out.reason}")
        notes += [f"{name}: {j.variant}: {j.detail}" for j in outcome.judged]
        students = {j.variant: j.session for j in outcome.judged if j.session is not None}
        for variant, t in _timed(students, xs, repeats).items():
            acc = _accuracy(students[variant], xs, np.asarray(yv), native.classes)
            lines.append(
                f"| {name} | approximate {variant} | {t['p50_us']:.1f} | {t['p99_us']:.1f} | {t['rows_per_s']:,.0f} | {acc:.4f} |"
            )
            ratio += (
                f"; {variant} p50 {base['p50_us'] / t['p50_us']:.0f}x pyfunc's speed, batch "
                f"{t['rows_per_s'] / base['rows_per_s']:.1f}x, accuracy {acc - native_acc:+.4f} vs the original"
            )
    return lines, ratio, notes


def _sparse_mlp(mlp: Any, x: Frame, workdir: Path) -> Any:
    """The MLP with 80% of each layer's weights (smallest magnitude) set to zero, as the
    optimized fp32 graph: the same matrices, mostly zeros."""
    import copy

    sparse = copy.deepcopy(mlp)
    last = sparse.steps[-1][1] if hasattr(sparse, "steps") else sparse
    for w in last.coefs_:
        w[np.abs(w) < np.quantile(np.abs(w), 0.8)] = 0.0
    converted = convert_model(sparse, "sklearn", x)
    [vf] = build_variants(converted.onnx_bytes, [Variant.FP32], workdir, x.to_numpy(np.float32))
    return open_session(vf, SessionSettings())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--budget", type=float, default=0.01, help="largest accuracy drop an approximation may cost"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import mlflow.pyfunc
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # LightGBM graphs warn about the label shape on every run

    lines = [
        "| model | runtime | p50 us | p99 us | rows/s @1024 | accuracy |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    ratios = []
    notes = []
    for name, model, x, y, flavor, xt, yt in _models():
        with tempfile.TemporaryDirectory() as tmp:
            path = _save(model, x, flavor, Path(tmp))
            converted = convert(path, read_mlmodel(path), x)
            xs = x.to_numpy(np.float32)
            pyfunc = mlflow.pyfunc.load_model(str(path))
            take = lambda d, s, n: d.iloc[s : s + n]  # noqa: E731
            rows: dict[str, dict[str, float]] = {}
            accuracy: dict[str, float] = {}
            rows["MLflow pyfunc predict"] = _median(
                [
                    measure(pyfunc.predict, x, [BATCH], calls=200, warmup=20, take=take)
                    for _ in range(args.repeats)
                ]
            )
            bare = ort.InferenceSession(converted.onnx_bytes, providers=["CPUExecutionProvider"])
            sessions: dict[str, Any] = {"bare ORT session (defaults)": bare}
            accuracy["bare ORT session (defaults)"] = _accuracy(
                bare, xs, np.asarray(y), converted.native.classes
            )
            variants = build_variants(
                converted.onnx_bytes,
                [Variant.FP32, Variant.INT8_DYNAMIC, Variant.INT8_STATIC],
                Path(tmp) / "v",
                xs[:512],
            )
            for vf in variants:
                if vf.path is None:
                    continue
                session = open_session(vf, SessionSettings())
                label = f"modelship {vf.variant}"
                sessions[label] = session
                accuracy[label] = _accuracy(session, xs, np.asarray(y), converted.native.classes)
            found, found_accuracy, kept = _approximations(
                converted, x, y, xt, yt, args.budget, Path(tmp) / "a"
            )
            sessions.update(found)
            accuracy.update(found_accuracy)
            notes += [f"{name}: {k}" for k in kept]
            if name.startswith("MLP"):
                sparse = _sparse_mlp(model, x, Path(tmp) / "sparse")
                label = "unstructured 80% zeros (fp32)"
                sessions[label] = sparse
                accuracy[label] = _accuracy(sparse, xs, np.asarray(y), converted.native.classes)
            rows.update(_timed(sessions, xs, args.repeats))
            native_acc = float(np.mean(np.asarray(converted.native.values) == np.asarray(y)))
            for runtime, t in rows.items():
                acc = accuracy.get(runtime, native_acc)
                lines.append(
                    f"| {name} | {runtime} | {t['p50_us']:.1f} | {t['p99_us']:.1f} | {t['rows_per_s']:,.0f} | {acc:.4f} |"
                )
            fp32 = rows["modelship fp32"]
            native = rows["MLflow pyfunc predict"]
            ratio = (
                f"{name}: fp32 p50 {native['p50_us'] / fp32['p50_us']:.0f}x faster than pyfunc, "
                f"{fp32['p50_us'] / rows['bare ORT session (defaults)']['p50_us']:.2f}x the bare session's p50, "
                f"batch-{BATCH} {fp32['rows_per_s'] / native['rows_per_s']:.1f}x pyfunc's rows/s"
            )
            if "modelship int8_dynamic" in rows:
                int8 = rows["modelship int8_dynamic"]
                ratio += (
                    f"; int8_dynamic p50 {fp32['p50_us'] / int8['p50_us']:.2f}x fp32's speed, batch "
                    f"{int8['rows_per_s'] / fp32['rows_per_s']:.2f}x, accuracy "
                    f"{accuracy['modelship int8_dynamic'] - accuracy['modelship fp32']:+.4f}"
                )
            for label in [r for r in rows if r.startswith(("approximate", "unstructured"))]:
                t = rows[label]
                ratio += (
                    f"; {label.removeprefix('approximate ')} p50 {fp32['p50_us'] / t['p50_us']:.2f}x "
                    f"fp32's speed, batch {t['rows_per_s'] / fp32['rows_per_s']:.2f}x, accuracy "
                    f"{accuracy[label] - native_acc:+.4f} vs the original"
                )
            ratios.append(ratio)
    extra, ratio, kept = _unconvertible(args.budget, args.repeats)
    lines += extra
    ratios.append(ratio)
    notes += kept
    print("\n".join(lines))
    print()
    print("\n".join(f"- {r}" for r in ratios))
    print()
    print("\n".join(f"- {n}" for n in notes))


if __name__ == "__main__":
    main()
