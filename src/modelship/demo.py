"""The main job on the embedded default: three versions of a model, deployed in turn.

breast-cancer (scikit-learn's bundled data): v1 a small random forest (good), v2 LightGBM
(better), v3 a logistic regression trained on noisy labels (degraded). Each is deployed through
every gate: v1 is promoted at once (no champion yet), v2 goes through a canary against v1
behind the local gateway and is promoted when every step's analysis passes, v3 is rejected at
validation with its reasons. Then production: ``modelship serve`` puts v2 behind the gateway
with v1 warm beside it, traffic like the reference data keeps the drift monitor quiet, and
traffic from "recalibrated sensors" (every feature x1.4) makes it roll v2 back to v1.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from modelship.core.errors import InputError
from modelship.core.lifeline import tied
from modelship.core.settings import Settings

MODEL = "breast-cancer"
DEMO_TAG = "modelship.demo"
SEED = 7


def split() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train, reference and validation tables (the last two with a ``target`` column)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=0.45, random_state=SEED, stratify=y
    )
    reference = x_train.assign(target=y_train.to_numpy())
    validation = x_val.assign(target=y_val.to_numpy())
    return x_train, pd.DataFrame({"target": y_train}), reference, validation


#: the models the demo trains, one per version, in the order it registers them
MODEL_KINDS = ("forest", "lightgbm", "noisy-logreg")


def train_model(kind: str, x: pd.DataFrame, y: pd.Series) -> Any:
    """Fit one of the demo's models (a kind in :data:`MODEL_KINDS`) on ``x`` and ``y``; seeded.

    ``forest``: a small scikit-learn random forest (v1, good); ``lightgbm``: a LightGBM booster
    (v2, better); ``noisy-logreg``: a scaled logistic regression trained with 30% of the labels
    flipped (v3, degraded). Raises ValueError for any other kind.
    """
    if kind == "forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(20, max_depth=2, random_state=SEED).fit(x, y)
    if kind == "lightgbm":
        import lightgbm as lgb

        params = {
            "objective": "binary",
            "learning_rate": 0.1,
            "num_leaves": 8,
            "verbose": -1,
            "seed": SEED,
        }
        return lgb.train(params, lgb.Dataset(x, y), num_boost_round=60)
    if kind == "noisy-logreg":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        rng = np.random.default_rng(SEED)
        flipped = np.where(rng.random(len(y)) < 0.3, 1 - y.to_numpy(), y.to_numpy())
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=500)).fit(
            x, flipped
        )
    raise ValueError(f"unknown model kind {kind!r}; one of {', '.join(MODEL_KINDS)}")


def register_version(kind: str, settings: Settings, description: str) -> str:
    """Train one model, log it with its evaluation data, register it; its version number."""
    import mlflow
    from mlflow.models import infer_signature

    from modelship.datasets import log_datasets
    from modelship.registry.client import Registry
    from modelship.registry.experiments import ensure_experiment

    x_train, y_frame, reference, validation = split()
    y_train = y_frame["target"]
    model = train_model(kind, x_train, y_train)
    registry = Registry()
    experiment = ensure_experiment(registry.client, settings, f"{MODEL}-training")
    with mlflow.start_run(experiment_id=experiment, run_name=f"{MODEL}-{kind}"):
        signature = infer_signature(x_train, model.predict(x_train.head(5)))
        if kind == "lightgbm":
            info = mlflow.lightgbm.log_model(
                model, name="model", signature=signature, registered_model_name=MODEL
            )
        else:
            # skops, not pickle; the tree's internal type must be named as trusted on purpose
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=signature,
                registered_model_name=MODEL,
                skops_trusted_types=["sklearn.tree._tree.Tree"] if kind == "forest" else None,
            )
        log_datasets(validation, reference)
    version = str(info.registered_model_version)
    ref = registry.resolve(MODEL, version=version)
    registry.client.update_model_version(MODEL, version, description)
    registry.record_digest(ref)
    return version


def _reset(console: Console, home: Path) -> None:
    """Remove the demo model from an earlier demo run, never a model the demo did not make:
    its registry entry, and its rollout, monitor and inference-log state (version numbers
    start again at 1, so old state would be read as the new versions')."""
    from mlflow.exceptions import MlflowException

    from modelship.registry.client import Registry

    client = Registry().client
    try:
        existing = client.get_registered_model(MODEL)
    except MlflowException:
        return
    if existing.tags.get(DEMO_TAG) != "true":
        raise InputError(
            f"a model named {MODEL!r} exists and was not made by the demo",
            hint="run the demo with another MODELSHIP_HOME",
        )
    console.print(f"[dim]removing {MODEL} from an earlier demo run[/]")
    client.delete_registered_model(MODEL)
    shutil.rmtree(home / "inference" / MODEL, ignore_errors=True)
    for leftover in [*home.glob(f"rollouts/{MODEL}.*"), home / "monitor" / f"{MODEL}.json"]:
        leftover.unlink(missing_ok=True)


def run_demo(settings: Settings) -> list[dict[str, Any]]:
    from mlflow import MlflowClient

    from modelship.deploy import deploy_with_view
    from modelship.live import make_console
    from modelship.registry.client import Registry
    from modelship.status import model_status, render_status

    console = make_console()
    console.rule(f"modelship demo · registry {settings.tracking_uri}")
    _reset(console, settings.home)
    plan = [
        ("forest", "v1: small random forest (good)"),
        ("lightgbm", "v2: LightGBM (better)"),
        ("noisy-logreg", "v3: logistic regression on 30% flipped labels (degraded)"),
    ]
    versions = []
    with console.status("training and registering three versions…"):
        for kind, description in plan:
            # MLflow prints its registration messages straight to stderr
            with contextlib.redirect_stderr(io.StringIO()):
                version = register_version(kind, settings, description)
            if version == "1":
                MlflowClient().set_registered_model_tag(MODEL, DEMO_TAG, "true")
            versions.append(version)
            console.print(f"registered {MODEL} v{version}: {description}")
    summaries = []
    registry = Registry()
    for version in versions:
        console.rule(f"deploy {MODEL} v{version}")
        summary = deploy_with_view(settings, MODEL, version=version)
        summaries.append(summary)
        champion = registry.champion(MODEL)
        if champion is not None and champion.version == version:
            console.print(f"[green]v{version} is now champion[/]")
    _production(settings, console)
    console.rule("where each version stands")
    console.print(render_status(model_status(MODEL, registry)))
    console.print(
        f"[dim]MLflow UI: mlflow ui --backend-store-uri {settings.tracking_uri}  "
        "(experiments modelship-deployments and modelship-monitoring)[/]"
    )
    console.print(
        f"[dim]serve the champion's Bento: .venv/bin/modelship serve {MODEL} --port 3000, then "
        'POST /predict with {"inputs": [{column: value, ...}]}[/]'
    )
    return summaries


#: how far the demo's "recalibrated sensors" move every feature
SHIFT = 1.4


def _send(url: str, frame: pd.DataFrame, rate: float) -> int:
    """One row a request through the gateway, open loop; the number of failed requests."""
    import json

    from modelship.components.serving.loadgen import Phase, run

    bodies = [json.dumps({"inputs": [row]}).encode() for row in frame.to_dict(orient="records")]
    result = run(f"{url}/predict", bodies, [Phase(rate, len(bodies) / rate)], connections=32)
    return sum(result.errors.values())


def _production(settings: Settings, console: Console) -> None:
    """Serve the champion, send it traffic like its reference data, then shifted traffic, and
    let the drift monitor roll it back to the previous champion."""
    import subprocess
    import sys
    import time

    from modelship.components.monitor.passes import monitor_once
    from modelship.components.serving.local import live_router
    from modelship.components.serving.server import free_port

    console.rule(f"production: serve {MODEL}, watch it drift")
    validation = split()[3].drop(columns=["target"])
    logs = settings.home / "serving" / "logs" / MODEL
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "modelship.cli", "serve", MODEL, "--port", str(port)]
    with (logs / "serve.out").open("wb") as out:
        serve = subprocess.Popen(tied(cmd), env=settings.child_env(), stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while (live := live_router(settings.home, MODEL)) is None:
            if serve.poll() is not None or time.monotonic() > deadline:
                raise InputError("`modelship serve` did not start", hint=f"see {logs}/serve.out")
            time.sleep(0.5)
        record, _ = live
        console.print(f"serving v{record.champion} at {record.gateway} "
                      f"(v{record.standby} warm for rollback)")  # fmt: skip

        def send_and_watch(what: str, frame: pd.DataFrame) -> None:
            failed = _send(record.gateway, frame, 300)
            console.print(f"sent {len(frame)} requests {what}: {failed} failed")
            time.sleep(1.5)  # the inference log writes a file each second
            monitor_once(settings, MODEL, say=lambda m: console.print(f"  monitor: {m}"))

        send_and_watch("drawn like the reference data",
                       validation.sample(600, replace=True, random_state=SEED))  # fmt: skip
        shifted = validation.sample(750, replace=True, random_state=SEED + 1) * SHIFT
        send_and_watch(f"from recalibrated sensors (every feature x{SHIFT})", shifted)
    finally:
        serve.terminate()
        serve.wait(60)
