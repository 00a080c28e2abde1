"""A soak: minutes of steady traffic through the gateway while canaries come and go.

    .venv/bin/python benchmarks/soak.py [--minutes 5] [--rate 100] [--json FILE]

The demo's two versions of breast-cancer (v1 a forest, v2 LightGBM) are deployed with
``modelship deploy`` into a scratch home. Then both Bentos and modelship's gateway run as
``modelship serve`` runs them (the same launch functions), and open-loop traffic (``--rate``
req/s, one row a request, the loadgen the load test uses) goes through the gateway for
``--minutes`` while this repeats:

1. **canary**: v2 joins the gateway at weight 0 and the rollout controller steps it through the
   policy's steps (analysis on the gateway's own counts and the inference log), then promotes it;
2. **standby**: v1 is put back behind the gateway at weight 0, as ``modelship serve`` keeps the
   previous champion warm;
3. **drift**: the traffic's rows shift (each feature x1.5) and drift monitor passes run until one
   rolls v2 back to v1 (traffic first, then the registry's aliases);
4. the traffic goes back to rows like the reference data.

Every second the resident memory and open files of the gateway and of each Bento process (the
arbiter and its worker) are sampled. Reported: requests sent and failed (the goal is zero),
how many canaries and rollbacks completed, and each process' memory and open-file slope over
the run after its first minute (least squares, per minute).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modelship.components.monitor.stage import run_pass
from modelship.components.rollout.controller import Controller
from modelship.components.rollout.stage import MlflowRollouts
from modelship.components.rollout.state import Phase, StatusStore
from modelship.components.rollout.targets import InferenceLogs
from modelship.components.serving.loadgen import Phase as LoadPhase
from modelship.components.serving.loadgen import run as drive
from modelship.components.serving.local import gateway_launch
from modelship.components.serving.packaged import packaged_version
from modelship.components.serving.server import Server, free_port, package_launch, served
from modelship.components.targets.local import GatewayRouter
from modelship.core.settings import Settings
from modelship.core.traffic import Weights
from modelship.policies.loader import load_policy, policy_hash
from modelship.policies.schema import CanaryStep, Policy
from modelship.registry.client import Registry

MODEL = "breast-cancer"  # its policy's short canary steps and small drift windows
BIN = Path(sys.executable).parent


def _register_and_deploy(home: Path) -> None:
    """v1 (forest) promoted, v2 (LightGBM) deployed after it: both packaged, v2 the champion."""
    env = {**os.environ, "MODELSHIP_HOME": str(home)}
    script = """
import contextlib, io, mlflow
from mlflow.models import infer_signature
from modelship.core.settings import Settings
from modelship.core.traffic import Weights
from modelship.datasets import log_datasets
from modelship.demo import split, train_model
from modelship.policies.schema import CanaryStep, Policy
from modelship.registry.client import Registry
from modelship.registry.experiments import ensure_experiment
s = Settings.from_env(); s.prepare()
x, y, ref, val = split()
exp = ensure_experiment(Registry().client, s, "soak")
for kind, flavor, extra in (("forest", "sklearn", {"skops_trusted_types": ["sklearn.tree._tree.Tree"]}),
                            ("lightgbm", "lightgbm", {})):
    model = train_model(kind, x, y["target"])
    with mlflow.start_run(experiment_id=exp), contextlib.redirect_stderr(io.StringIO()):
        getattr(mlflow, flavor).log_model(model, name="model", registered_model_name="breast-cancer",
                                          signature=infer_signature(x, model.predict(x.head(5))), **extra)
        log_datasets(val, ref)
"""
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    for version in ("1", "2"):
        done = subprocess.run([str(BIN / "modelship"), "deploy", MODEL, "--version", version,
                               "--json"], env=env, capture_output=True, text=True)  # fmt: skip
        outcome = json.loads(done.stdout)["outcome"] if done.stdout.strip() else done.stderr
        if outcome != "passed":
            raise SystemExit(f"deploying v{version} for the soak failed: {outcome}")


class Traffic:
    """Open-loop load in back-to-back stretches; the rows change when ``shifted`` is set."""

    def __init__(self, url: str, normal: list[bytes], shifted: list[bytes], rate: float) -> None:
        self.url, self.normal, self.shifted, self.rate = url, normal, shifted, rate
        self.shift = threading.Event()
        self.stop = threading.Event()
        self.sent = self.ok = 0
        self.errors: dict[str, int] = {}
        self.thread = threading.Thread(target=self._run, name="soak-traffic", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            bodies = self.shifted if self.shift.is_set() else self.normal
            result = drive(self.url, bodies, [LoadPhase(self.rate, 2.0)], connections=64)
            self.sent += result.sent
            self.ok += result.ok
            for kind, n in result.errors.items():
                self.errors[kind] = self.errors.get(kind, 0) + n


@dataclass
class Sampler:
    """Resident memory (MB) and open files of each process, once a second."""

    roots: dict[str, int]
    samples: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        import psutil

        t0 = time.monotonic()
        while not self.stop.wait(1.0):
            for name, pid in self.roots.items():
                try:
                    root = psutil.Process(pid)
                    procs = [("", root), *((f"/worker{i}", c) for i, c in
                                           enumerate(root.children(recursive=True)))]  # fmt: skip
                    for suffix, p in procs:
                        self.samples.setdefault(name + suffix, []).append(
                            (time.monotonic() - t0, p.memory_info().rss / 2**20, p.num_fds())
                        )
                except psutil.Error:
                    continue

    def slopes(self, skip_s: float = 60.0) -> dict[str, dict[str, float]]:
        out = {}
        for name, rows in self.samples.items():
            kept = [r for r in rows if r[0] >= skip_s] or rows
            if len(kept) < 3:
                continue
            t = np.array([r[0] for r in kept]) / 60.0
            rss, fds = np.array([r[1] for r in kept]), np.array([r[2] for r in kept])
            out[name] = {
                "rss_mb_first": round(float(rss[0]), 1),
                "rss_mb_last": round(float(rss[-1]), 1),
                "rss_mb_per_min": round(float(np.polyfit(t, rss, 1)[0]), 3),
                "fds_first": int(fds[0]),
                "fds_last": int(fds[-1]),
                "fds_per_min": round(float(np.polyfit(t, fds, 1)[0]), 3),
            }
        return out


@contextlib.contextmanager
def _servers(settings: Settings, registry: Registry, token: str,
             logs: Path) -> Iterator[tuple[dict[str, Server], Server]]:  # fmt: skip
    """Both Bentos and the gateway (v1 champion alone), stopped at the end."""
    env = settings.child_env() | {"MODELSHIP_INFERENCE_LOG": str(logs)}
    with contextlib.ExitStack() as stack:
        bentos = {}
        for version in ("1", "2"):
            package = packaged_version(registry, registry.resolve(MODEL, version=version))[0]
            assert package is not None, f"v{version} has no Bento"
            port = free_port()
            bentos[version] = stack.enter_context(served(
                package_launch(package, port, env, None), port,
                settings.home / "soak" / f"v{version}.log", 120))  # fmt: skip
        port = free_port()
        gateway = stack.enter_context(served(
            gateway_launch(port, token, {"champion": (bentos["1"].url, "1")}, None, env), port,
            settings.home / "soak" / "gateway.log", 30))  # fmt: skip
        yield bentos, gateway


def _rows(shift: float) -> list[bytes]:
    from modelship.demo import split

    reference = split()[2].drop(columns=["target"])
    return [json.dumps({"inputs": [row]}).encode()
            for row in (reference * shift).to_dict(orient="records")]  # fmt: skip


def _policy() -> Policy:
    """The model's policy, with canary steps long enough for the analysis' minimum requests at
    the soak's rate (the shipped steps count on the deploy's own 100 req/s load)."""
    policy = load_policy(MODEL).policy
    steps = [CanaryStep(weight=50, pause_s=5), CanaryStep(weight=100, pause_s=2)]
    return policy.model_copy(update={"rollout": policy.rollout.model_copy(update={"steps": steps})})


def _cycle(registry: Registry, router: GatewayRouter, bentos: dict[str, Server], home: Path,
           logs: Path, traffic: Traffic, say: Any) -> dict[str, Any]:  # fmt: skip
    """One canary of v2 (promoted), then drift until the monitor rolls it back to v1."""
    policy = _policy()
    urls = {v: s.url for v, s in bentos.items()}
    router._call("PUT", "/admin/backends", {"champion": {"url": urls["1"], "version": "1"},
                                            "challenger": {"url": urls["2"], "version": "2"}})  # fmt: skip
    router.set_weights(Weights(0))
    controller = Controller(StatusStore(home / "soak" / "rollouts", MODEL), router, router,
                            InferenceLogs(str(logs), MODEL), MlflowRollouts(registry),
                            policy.rollout)  # fmt: skip
    t0 = time.monotonic()
    status = controller.run(controller.begin(MODEL, "1", "2", policy_hash(policy)))
    canary_s = time.monotonic() - t0
    say(f"  canary: {status.phase} after {canary_s:.0f} s ({status.reason})")
    if status.phase is not Phase.PROMOTED:
        return {"canary": str(status.phase), "reason": status.reason}
    # as `modelship serve` runs it: the new champion, the previous one warm at weight 0
    router._call("PUT", "/admin/backends", {"champion": {"url": urls["2"], "version": "2"},
                                            "challenger": {"url": urls["1"], "version": "1"}})  # fmt: skip
    router.set_weights(Weights(0))
    traffic.shift.set()
    t1 = time.monotonic()
    rolled = None
    try:
        while rolled is None and time.monotonic() - t1 < 120:
            time.sleep(2.0)
            result = run_pass(MODEL, policy, registry=registry, home=home,
                              bentoml_home=home / "bentoml", log_root=str(logs), router=router,
                              log_reports=False)  # fmt: skip
            rolled = result.rollback
    finally:
        traffic.shift.clear()
    drift_s = time.monotonic() - t1
    say(f"  drift: {'rolled back' if rolled else 'no rollback'} after {drift_s:.0f} s")
    return {"canary": str(status.phase), "canary_s": round(canary_s, 1),
            "rolled_back": rolled is not None, "drift_to_rollback_s": round(drift_s, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=100.0, help="req/s; 60 or more")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelship-soak-") as tmp:
        home = Path(tmp)
        print("deploying v1 and v2 of breast-cancer (registers, gates, packages)...", flush=True)
        _register_and_deploy(home)
        settings = Settings.from_env({"MODELSHIP_HOME": str(home)})
        settings.prepare()
        registry = Registry()
        registry.promote(registry.resolve(MODEL, version="1"))  # each cycle starts from v1
        logs = home / "soak" / "inference"
        token = secrets.token_urlsafe(16)
        with _servers(settings, registry, token, logs) as (bentos, gateway):
            router = GatewayRouter(gateway.url, token)
            traffic = Traffic(f"{gateway.url}/predict", _rows(1.0), _rows(1.5), args.rate)
            sampler = Sampler({"gateway": gateway.proc.pid,
                               **{f"bento-v{v}": s.proc.pid for v, s in bentos.items()}})  # fmt: skip
            sampling = threading.Thread(target=sampler.run, daemon=True)
            sampling.start()
            traffic.thread.start()
            print(f"soaking for {args.minutes:g} min at {args.rate:g} req/s", flush=True)
            cycles: list[dict[str, Any]] = []
            end = time.monotonic() + args.minutes * 60
            while time.monotonic() < end:
                print(f"cycle {len(cycles) + 1}", flush=True)
                cycles.append(_cycle(registry, router, bentos, home, logs, traffic, print))
                registry.promote(registry.resolve(MODEL, version="1"))
            traffic.stop.set()
            traffic.thread.join()
            sampler.stop.set()
            sampling.join()
    figures = {
        "minutes": args.minutes, "rate": args.rate, "sent": traffic.sent, "ok": traffic.ok,
        "failed": traffic.sent - traffic.ok, "errors": traffic.errors,
        "canaries_promoted": sum(c["canary"] == "promoted" for c in cycles),
        "rollbacks": sum(bool(c.get("rolled_back")) for c in cycles), "cycles": cycles,
        "processes": sampler.slopes(),
    }  # fmt: skip
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
