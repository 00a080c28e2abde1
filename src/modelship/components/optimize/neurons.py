"""Structured pruning: whole hidden neurons removed, so every dense layer really shrinks.

Zeroing single weights (unstructured sparsity) leaves ONNX Runtime's CPU kernels multiplying the
same dense matrices, so it buys nothing there (the benchmark measures it once); removing a neuron
removes a column of one matrix and a row of the next. A neuron's importance is how much it can
pass on: its mean absolute activation over the reference rows times the norm of its outgoing
weights. Each hidden layer keeps the same share of its most important neurons; the shares are
tried from the smallest up, each fine-tuned on the reference rows where they carry labels, and
the first within the budget on the validation rows wins.
"""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from modelship.components.optimize.approximation import (
    Approximation,
    Rows,
    split_pipeline,
    transformed,
    type_name,
    with_last,
)
from modelship.components.optimize.convert import predict_native

VARIANT = "structured_pruning"
#: shares of each hidden layer's neurons to keep, smallest first
KEEP = (0.125, 0.25, 0.375, 0.5, 0.75)
#: fine-tuning after pruning: enough to recover, far less than training. scikit-learn's MLPs
#: take this many more iterations of their own solver (L-BFGS or Adam, as they were trained)
TUNE_ITERATIONS = 60
#: PyTorch modules: full-batch Adam steps at this rate. 60 steps at 1e-3 left a pruned digits
#: MLP 0.8 points short of its original at a quarter of its neurons, so only three quarters
#: were kept; 200 at 1e-2 (0.2 s there) keep a quarter within 0.01 (benchmarks/optimize.py)
TORCH_TUNE_STEPS = 200
TORCH_TUNE_RATE = 1e-2

_SKLEARN_MLPS = {"MLPClassifier", "MLPRegressor"}
_ACTIVATIONS: dict[str, Callable[[NDArray[np.float64]], NDArray[np.float64]]] = {
    "identity": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "tanh": np.tanh,
    "logistic": lambda z: 1 / (1 + np.exp(-z)),
}


def prune(model: Any, flavor: str, rows: Rows) -> Approximation:
    if flavor == "pytorch":
        return _torch(model, rows)
    if flavor == "sklearn" and type_name(model) in _SKLEARN_MLPS:
        return _sklearn(model, rows)
    what = type_name(model) if flavor == "sklearn" else f"a {flavor} model"
    return Approximation(
        VARIANT, skipped=f"applies to scikit-learn MLPs and PyTorch Sequential stacks of Linear "
        f"layers; the model is {what}",
    )  # fmt: skip


def _keep(importance: NDArray[Any], share: float) -> NDArray[np.intp]:
    """The indices of the most important ``share`` of the neurons, in their original order."""
    n = max(1, math.ceil(share * len(importance)))
    return np.sort(np.argsort(-importance, kind="stable")[:n])


def _smallest(
    hidden: list[int], candidate: Any, rows: Rows, flavor: str
) -> tuple[Any, float] | None:
    """The first share (smallest first) whose pruned model stays within the budget."""
    for share in KEEP:
        if all(math.ceil(share * h) >= h for h in hidden):
            break  # nothing left to remove
        model = candidate(share)
        out = predict_native(model, flavor, rows.validation)
        if rows.budget.within(out.values, out.scores):
            return model, share
    return None


def _result(found: tuple[Any, float] | None, hidden: list[int], sizes: Any, flavor: str,
            tuned: bool) -> Approximation:  # fmt: skip
    how = "fine-tuned on the reference rows" if tuned else "not fine-tuned (no reference labels)"
    if found is None:
        return Approximation(
            VARIANT, out_of_budget=f"no share of the hidden neurons ({', '.join(map(str, hidden))}) "
            f"down to {KEEP[-1]:.0%} stays within the budget ({how})",
        )  # fmt: skip
    model, share = found
    kept = sizes(model)
    return Approximation(
        VARIANT, model, flavor,
        f"hidden layers {'-'.join(map(str, kept))} of {'-'.join(map(str, hidden))}, {how}",
        {"neurons": sum(kept), "neurons_original": sum(hidden), "keep_share": share},
    )  # fmt: skip


# -- scikit-learn MLPClassifier / MLPRegressor -------------------------------------------------


def _sklearn(model: Any, rows: Rows) -> Approximation:
    prefix, mlp = split_pipeline(model)
    x_ref = np.asarray(transformed(prefix, rows.reference), dtype=np.float64)
    importance = _sklearn_importance(mlp, x_ref)
    hidden = [len(i) for i in importance]
    labels = _sklearn_labels(mlp, rows.reference_target)
    tuned = labels is not None

    def candidate(share: float) -> Any:
        pruned = _sklearn_pruned(mlp, [_keep(i, share) for i in importance])
        if labels is not None:
            _sklearn_tune(pruned, x_ref, labels)
        return with_last(model, pruned)

    def sizes(found: Any) -> list[int]:
        return [w.shape[1] for w in split_pipeline(found)[1].coefs_[:-1]]

    return _result(_smallest(hidden, candidate, rows, "sklearn"), hidden, sizes, "sklearn", tuned)


def _sklearn_importance(mlp: Any, x: NDArray[np.float64]) -> list[NDArray[np.float64]]:
    act = _ACTIVATIONS[mlp.activation]
    out = []
    a = x
    for w, b, w_next in zip(mlp.coefs_[:-1], mlp.intercepts_[:-1], mlp.coefs_[1:], strict=True):
        a = act(a @ w + b)
        out.append(np.abs(a).mean(axis=0) * np.linalg.norm(w_next, axis=1))
    return out


def _sklearn_pruned(mlp: Any, keep: list[NDArray[np.intp]]) -> Any:
    pruned = copy.deepcopy(mlp)
    coefs, intercepts = list(mlp.coefs_), list(mlp.intercepts_)
    for layer, kept in enumerate(keep):
        coefs[layer] = coefs[layer][:, kept]
        intercepts[layer] = intercepts[layer][kept]
        coefs[layer + 1] = coefs[layer + 1][kept, :]
    pruned.coefs_, pruned.intercepts_ = coefs, intercepts
    pruned.hidden_layer_sizes = tuple(len(k) for k in keep)
    return pruned


def _sklearn_labels(mlp: Any, target: NDArray[Any] | None) -> NDArray[Any] | None:
    """Reference labels fit to fine-tune on: a classifier's must all be classes it knows."""
    if target is None:
        return None
    if hasattr(mlp, "classes_") and not set(np.unique(target)) <= set(mlp.classes_.tolist()):
        return None
    return target


def _sklearn_tune(mlp: Any, x: NDArray[np.float64], y: NDArray[Any]) -> None:
    """A few more iterations from the pruned weights (warm start keeps them)."""
    from sklearn.exceptions import ConvergenceWarning

    mlp.set_params(warm_start=True, max_iter=TUNE_ITERATIONS, early_stopping=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(x, y)


# -- PyTorch: a Sequential of Linear layers and element-wise activations ----------------------

_ELEMENTWISE = {
    "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "GELU", "SiLU", "ELU", "Dropout", "Identity",
}  # fmt: skip


_GRAPH_OPS = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "gelu": "GELU",
              "silu": "SiLU", "elu": "ELU", "leaky_relu": "LeakyReLU"}  # fmt: skip


def _from_graph(module: Any) -> Any:
    """The chain of ``aten.linear`` and element-wise activations in an exported graph (what
    MLflow loads from a ``pt2`` model) as an ``nn.Sequential``; a string saying why not."""
    import torch

    layers: list[Any] = []
    ops = [n for n in module.graph.nodes if n.op == "call_function"]
    previous = next((n for n in module.graph.nodes if n.op == "placeholder"), None)
    for node in ops:
        name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        if node.args[0] is not previous:
            return f"a graph that is not one chain of layers (at {name})"
        if name == "linear":
            weight = module.get_parameter(node.args[1].target)
            bias = module.get_parameter(node.args[2].target) if len(node.args) > 2 else None
            linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if bias is not None:
                    linear.bias.copy_(bias)
            layers.append(linear)
        elif name in _GRAPH_OPS and len(node.args) == 1:
            layers.append(getattr(torch.nn, _GRAPH_OPS[name])())
        elif name not in ("dropout",):
            return f"the operator {name}"
        previous = node
    return torch.nn.Sequential(*layers).eval()


def _torch(module: Any, rows: Rows) -> Approximation:
    import torch

    if not isinstance(module, torch.nn.Sequential) and isinstance(module, torch.fx.GraphModule):
        rebuilt = _from_graph(module)
        if isinstance(rebuilt, str):
            return Approximation(
                VARIANT, skipped=f"applies to a chain of Linear layers and element-wise "
                f"activations; the exported graph has {rebuilt}",
            )  # fmt: skip
        module = rebuilt
    if not isinstance(module, torch.nn.Sequential):
        return Approximation(
            VARIANT, skipped=f"applies to a PyTorch Sequential of Linear layers; the model is "
            f"{type(module).__name__}",
        )  # fmt: skip
    odd = [type(m).__name__ for m in module if type(m).__name__ not in _ELEMENTWISE | {"Linear"}]
    linears = [i for i, m in enumerate(module) if isinstance(m, torch.nn.Linear)]
    if odd or len(linears) < 2:
        why = f"layers {', '.join(sorted(set(odd)))}" if odd else "no hidden Linear layer"
        return Approximation(
            VARIANT, skipped=f"applies to a Sequential of Linear layers and element-wise "
            f"activations; this one has {why}",
        )  # fmt: skip
    x_ref = torch.tensor(rows.reference.to_numpy(np.float32))
    importance = _torch_importance(module, linears, x_ref)
    hidden = [len(i) for i in importance]
    target = _torch_target(rows)
    tuned = target is not None

    def candidate(share: float) -> Any:
        pruned = _torch_pruned(module, linears, [_keep(i, share) for i in importance])
        if target is not None:
            _torch_tune(pruned, x_ref, target, rows.original.task == "classification")
        return pruned

    def sizes(found: Any) -> list[int]:
        return [found[i].out_features for i in linears[:-1]]

    return _result(_smallest(hidden, candidate, rows, "pytorch"), hidden, sizes, "pytorch", tuned)


def _torch_importance(module: Any, linears: list[int], x: Any) -> list[NDArray[np.float64]]:
    import torch

    module.eval()
    out = []
    with torch.no_grad():
        a = x
        after: dict[int, Any] = {}
        for i, layer in enumerate(module):
            a = layer(a)
            after[i] = a
        for here, following in itertools.pairwise(linears):
            # the activation the next Linear reads is the output just before it
            mean_abs = after[following - 1].abs().mean(dim=0).numpy()
            weight = module[following].weight.detach().numpy()
            out.append(mean_abs.astype(np.float64) * np.linalg.norm(weight, axis=0))
            assert len(out[-1]) == module[here].out_features
    return out


def _torch_pruned(module: Any, linears: list[int], keep: list[NDArray[np.intp]]) -> Any:
    import torch

    pruned = copy.deepcopy(module)
    for here, following, kept in zip(linears[:-1], linears[1:], keep, strict=True):
        index = torch.as_tensor(kept, dtype=torch.long)
        old, nxt = pruned[here], pruned[following]
        shrunk = torch.nn.Linear(old.in_features, len(kept), bias=old.bias is not None)
        grown = torch.nn.Linear(len(kept), nxt.out_features, bias=nxt.bias is not None)
        with torch.no_grad():
            shrunk.weight.copy_(old.weight[index])
            if old.bias is not None:
                shrunk.bias.copy_(old.bias[index])
            grown.weight.copy_(nxt.weight[:, index])
            if nxt.bias is not None:
                grown.bias.copy_(nxt.bias)
        pruned[here], pruned[following] = shrunk, grown
    return pruned


def _torch_target(rows: Rows) -> NDArray[Any] | None:
    """Reference targets as the module's outputs take them: class indices, or values."""
    target = rows.reference_target
    if target is None:
        return None
    if rows.original.task != "classification":
        return np.asarray(target, dtype=np.float32)
    index = {c: i for i, c in enumerate(rows.original.classes)}
    if not all(t in index for t in pd.unique(target)):
        return None
    return np.array([index[t] for t in target], dtype=np.int64)


def _torch_tune(module: Any, x: Any, target: NDArray[Any], classify: bool) -> None:
    import torch

    torch.manual_seed(0)
    y = torch.tensor(target)
    optimizer = torch.optim.Adam(module.parameters(), lr=TORCH_TUNE_RATE)
    module.train()
    for _ in range(TORCH_TUNE_STEPS):
        optimizer.zero_grad()
        out = module(x)
        if classify:
            loss = torch.nn.functional.cross_entropy(out, y)
        else:
            loss = torch.nn.functional.mse_loss(out.reshape(-1), y)
        loss.backward()
        optimizer.step()
    module.eval()
