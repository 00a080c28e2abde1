"""Canaries against real Bentos behind the real gateway, for the analysis tests and benchmark.

Three versions of the demo model are packaged (the stages called through the shared runner, as
a pipeline step calls them) and served once; each canary gets its own gateway and controller
and open-loop traffic of validation rows in an order set by its seed.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.tree import DecisionTreeClassifier

from modelship.components.contract import run_stage
from modelship.components.optimize import stage as optimize
from modelship.components.package import stage as package
from modelship.components.rollout.controller import Controller, PredictionSource
from modelship.components.rollout.state import RolloutStatus, StatusStore
from modelship.components.rollout.targets import InferenceLogs
from modelship.components.serving.loadgen import Phase as LoadPhase
from modelship.components.serving.loadgen import run as drive
from modelship.components.serving.local import gateway_launch
from modelship.components.serving.packaged import bodies
from modelship.components.serving.server import Launch, free_port, package_launch, served
from modelship.components.targets.local import GatewayRouter
from modelship.core.records import PackageRecord
from modelship.core.settings import Settings
from modelship.core.verdict import Verdict
from modelship.demo import train_model
from modelship.policies.loader import load_policy
from modelship.policies.schema import Analysis, CanaryStep, Rollout
from modelship.registry.client import Registry
from tests.servers.controller import FileRegistry, NoLogs
from tests.support import TOKEN, bento_env, register, register_forest, stage_context

MODEL = "breast-cancer"
TRUSTED = ["sklearn.tree._tree.Tree"]


def _package(settings: Settings, version: str, work: Path) -> PackageRecord:
    """validate's place is taken by a passing verdict: these versions are made to pass it."""
    registry = Registry()
    ref = registry.resolve(MODEL, version=version)
    model_dir, digest = registry.checked_download(ref, work / "model")
    policy = load_policy(MODEL).policy
    passed = Verdict(stage="validate", passed=True, reason="made for this test")
    inputs = optimize.OptimizeInputs(model_dir, digest, work / "optimized")
    optimized = run_stage(optimize.STAGE, stage_context(settings, ref, policy, work / "o"), inputs,
                          passed)  # fmt: skip
    assert optimized.passed, optimized.reason
    packed = package.PackageInputs(model_dir, digest, work / "optimized", work / "packaged")
    verdict = run_stage(package.STAGE, stage_context(settings, ref, policy, work / "p"), packed,
                        optimized)  # fmt: skip
    assert verdict.passed, verdict.reason
    return PackageRecord.load(work / "packaged")


def package_versions(settings: Settings, data: Any, work: Path) -> dict[str, PackageRecord]:
    """champion (the demo's forest), copy (the champion's own artifact registered again: a
    byte-identical copy) and flipper (a tree that answers the champion's labels on the
    validation rows with a tenth of them flipped)."""
    x, y, ref_data, val = data
    champion = register_forest(settings, MODEL, data)
    registry = Registry()
    first = registry.resolve(MODEL, version=champion)
    copy = registry.client.create_model_version(MODEL, first.source, run_id=first.run_id).version
    registry.record_digest(registry.resolve(MODEL, version=str(copy)))
    features = val.drop(columns=["target"])
    labels = train_model("forest", x, y).predict(features)
    flip = np.random.default_rng(0).random(len(labels)) < 0.1
    tree = DecisionTreeClassifier(random_state=0).fit(features, np.where(flip, 1 - labels, labels))
    flipper = register(settings, MODEL, tree, x, ref_data, val, skops_trusted_types=TRUSTED)
    return {name: _package(settings, version, work / name)
            for name, version in (("champion", champion), ("copy", str(copy)),
                                  ("flipper", flipper))}  # fmt: skip


@contextlib.contextmanager
def serving(home: Path, versions: dict[str, PackageRecord], logs: Path) -> Iterator[dict[str, str]]:
    """Every version's Bento served, writing its inference log under ``logs``; their URLs."""
    env = bento_env(home, MODELSHIP_INFERENCE_LOG=str(logs / "inference"))
    with contextlib.ExitStack() as stack:
        urls = {}
        for name, record in versions.items():
            port = free_port()
            server = stack.enter_context(
                served(package_launch(record.packaged, port, env, None), port,
                       logs / f"{name}.log", 120)
            )  # fmt: skip
            urls[name] = server.url
        yield urls


def median_ms(url: str, rows: list[bytes], rate: float = 100.0) -> float:
    """A server's median latency (ms) for validation rows, open-loop at ``rate`` for 2 s."""
    figures = drive(f"{url}/predict", rows, [LoadPhase(rate, 2.0)], warmup_s=0.5).figures()
    return float(figures["latency_ms"]["p50"])


@contextlib.contextmanager
def delayed(upstreams: dict[str, tuple[str, float]], logs: Path) -> Iterator[dict[str, str]]:
    """A hop (tests/servers/delay.py) in front of each server, adding its delay in ms."""
    with contextlib.ExitStack() as stack:
        urls = {}
        for name, (upstream, delay_ms) in upstreams.items():
            port = free_port()
            cmd = [sys.executable, "-m", "tests.servers.delay", str(port), upstream, str(delay_ms)]
            launch = Launch(f"delay {delay_ms:g} ms", cmd, dict(os.environ))
            urls[name] = stack.enter_context(
                served(launch, port, logs / f"delay-{name}.log", 30)
            ).url
        yield urls


def canary(
    urls: dict[str, str], versions: dict[str, PackageRecord], challenger: str, *, weight: int,
    seed: int, rate: float, tmp: Path, settings: Settings, deadline_s: float = 60.0,
    check: Literal["paired", "distribution"] = "paired", logs: Path | None = None,
) -> tuple[RolloutStatus, float]:  # fmt: skip
    """One canary of ``challenger`` against the champion; its final status and the seconds
    from its start to the decision. ``check`` distribution reads the Bentos' inference logs
    under ``logs``, as the controller does when the answers are not paired."""
    policy = Rollout(
        steps=[CanaryStep(weight=weight, pause_s=3.0), CanaryStep(weight=100, pause_s=0.5)],
        mirror_share=1.0 if check == "paired" else 0.0, tick_s=0.1, drain_s=0,
        progress_deadline_s=deadline_s,
        analysis=Analysis(min_requests=40, min_paired=100, prediction_check=check),
    )  # fmt: skip
    record, champion = versions[challenger], versions["champion"]
    ref = Registry().resolve(MODEL, version=record.version)
    rows = bodies(load_policy(MODEL).policy, ref, record.columns)
    random.Random(seed).shuffle(rows)
    port = free_port()
    backends = {"champion": (urls["champion"], champion.version),
                "challenger": (urls[challenger], record.version)}  # fmt: skip
    launch = gateway_launch(port, TOKEN, backends, None, settings.child_env())
    predictions: PredictionSource = (
        InferenceLogs(str(logs / "inference"), MODEL) if logs is not None else NoLogs()
    )
    with served(launch, port, tmp / "gateway.log", 30) as gateway:
        router = GatewayRouter(gateway.url, TOKEN)
        controller = Controller(StatusStore(tmp, "m"), router, router, predictions,
                                FileRegistry(tmp / "registry.log"), policy)  # fmt: skip
        started = time.monotonic()
        status = controller.begin(MODEL, champion.version, record.version, "h")
        done = threading.Event()
        traffic = threading.Thread(
            target=drive,
            args=(f"{gateway.url}/predict", rows, [LoadPhase(rate, 120)]),
            kwargs={"alive": lambda: "over" if done.is_set() else None, "connections": 32},
            daemon=True,
        )
        traffic.start()
        try:
            final = controller.run(status)
            return final, time.monotonic() - started
        finally:
            done.set()
            traffic.join(10)
