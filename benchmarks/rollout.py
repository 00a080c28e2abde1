"""The rollout's targets, measured: gateway overhead, weight changes under load, abort speed.

    .venv/bin/python benchmarks/rollout.py [--seconds 10] [--repeats 3]

A RandomForest of 200 trees (breast_cancer) is deployed with ``modelship deploy``; two copies of
its Bento (champion and challenger) run pinned to core 0, modelship's gateway (``python -m
gateway``) and the open-loop generator share core 1. In this one run:

- **overhead**: the same load (200 and 1,000 req/s, one validation row a request) straight at
  the champion and through the gateway, alternated ``--repeats`` times; p50 and p99 of each;
- **weight changes**: 200 req/s through the gateway for ``--seconds`` while the challenger's
  weight moves every 0.25 s, by the admin API; failed requests counted;
- **abort**: from the controller's abort decision to the gateway's acknowledgement of weight 0,
  then 100 requests checked to reach only the champion; 30 times;
- **rollback**: the drift monitor's switch to the previous champion kept warm behind the
  gateway (as ``modelship serve`` runs it), from the decision to the gateway's acknowledgement,
  then 100 requests checked to reach only the previous champion; 30 times;
- **crash**: the challenger SIGKILLed at 50% under 200 req/s; client-visible errors counted.

The canary analysis itself (false aborts of an identical copy, detection of a worse version,
time to decision; paired against unpaired) is ``benchmarks/canary.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.package import BIN, _deploy, _port, _wait
from modelship.components.monitor.rollback import switch_traffic
from modelship.components.serving.loadgen import Phase, run
from modelship.components.targets.local import GatewayRouter
from modelship.core.traffic import Weights
from modelship.registry.client import ModelRef


def _start(cmd: list[str], env: dict[str, str], core: int, log: Path) -> subprocess.Popen[bytes]:
    pinned = ["taskset", "-c", str(core), *cmd] if (os.cpu_count() or 1) > 1 else cmd
    return subprocess.Popen(pinned, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def _load(url: str, bodies: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    result = run(url, bodies, [Phase(rate, seconds)], warmup_s=1.0, connections=64)
    return result.figures()


def _variants(url: str, n: int) -> set[str]:
    seen = set()
    for _ in range(n):
        request = urllib.request.Request(url, data=b'{"inputs": [[' + b"1.0," * 29 + b"1.0]]}",
                                         headers={"content-type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request) as r:
            seen.add(r.headers.get("x-modelship-variant"))
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    from sklearn.datasets import load_breast_cancer

    x = load_breast_cancer().data
    bodies = [json.dumps({"inputs": [r.tolist()]}).encode() for r in x[:200]]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="modelship-bench-") as tmp:
        home = Path(tmp)
        print("deploying the forest (registers, validates, optimizes, packages)...", flush=True)
        tag, _ = _deploy(home)
        env = {**os.environ, "MODELSHIP_HOME": str(home), "BENTOML_HOME": str(home / "bentoml"),
               "BENTOML_DO_NOT_TRACK": "true"}  # fmt: skip
        ports = {"champion": _port(), "challenger": _port(), "gateway": _port()}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        token = secrets.token_urlsafe(16)
        try:
            for name in ("champion", "challenger"):
                cmd = [str(BIN / "bentoml"), "serve", tag, "--port", str(ports[name])]
                procs[name] = _start(cmd, env, 0, home / f"{name}.log")
                _wait(f"http://127.0.0.1:{ports[name]}/readyz", procs[name])
            cmd = [sys.executable, "-m", "modelship.gateway", "--port", str(ports["gateway"]),
                   "--champion", f"http://127.0.0.1:{ports['champion']}@v1",
                   "--challenger", f"http://127.0.0.1:{ports['challenger']}@v2"]  # fmt: skip
            procs["gateway"] = _start(cmd, {**env, "MODELSHIP_GATEWAY_TOKEN": token}, 1,
                                      home / "gateway.log")  # fmt: skip
            gateway = f"http://127.0.0.1:{ports['gateway']}"
            _wait(f"{gateway}/readyz", procs["gateway"])
            router = GatewayRouter(gateway, token)
            direct = f"http://127.0.0.1:{ports['champion']}/predict"

            print("overhead: the same load straight and through the gateway", flush=True)
            overhead: dict[str, Any] = {}
            for rate in (200, 1000):
                rows: dict[str, list[dict[str, float]]] = {"direct": [], "gateway": []}
                for _ in range(args.repeats):
                    for label, url in (("direct", direct), ("gateway", f"{gateway}/predict")):
                        f = _load(url, bodies, rate, args.seconds)
                        rows[label].append(f["latency_ms"] | {"errors": sum(f["errors"].values())})
                p50 = {k: statistics.median(r["p50"] for r in v) for k, v in rows.items()}
                p99 = {k: statistics.median(r["p99"] for r in v) for k, v in rows.items()}
                overhead[str(rate)] = {"p50_ms": p50, "p99_ms": p99,
                                       "added_p50_ms": p50["gateway"] - p50["direct"],
                                       "runs": rows}  # fmt: skip
                print(f"  {rate} req/s: p50 {p50['direct']:.3f} -> {p50['gateway']:.3f} ms "
                      f"(+{p50['gateway'] - p50['direct']:.3f}), p99 {p99['direct']:.2f} -> "
                      f"{p99['gateway']:.2f} ms", flush=True)  # fmt: skip
            results["overhead"] = overhead

            print("weight changes under 200 req/s", flush=True)
            changes = {"n": 0}
            stop = threading.Event()

            def move() -> None:
                weights = [0, 10, 25, 50, 75, 100, 50, 0]
                while not stop.is_set():
                    router.set_weights(Weights(weights[changes["n"] % len(weights)]))
                    changes["n"] += 1
                    time.sleep(0.25)

            mover = threading.Thread(target=move)
            mover.start()
            moved = _load(f"{gateway}/predict", bodies, 200, args.seconds)
            stop.set()
            mover.join()
            results["weight_changes"] = {"changes": changes["n"], "sent": moved["sent"],
                                         "errors": moved["errors"]}  # fmt: skip
            print(f"  {changes['n']} changes, {moved['sent']} requests, errors "
                  f"{moved['errors'] or 'none'}", flush=True)  # fmt: skip

            print("abort: decision to weight 0 acknowledged", flush=True)
            aborts, leaks = [], 0
            for _ in range(30):
                router.set_weights(Weights(50))
                started = time.perf_counter()  # the controller's abort decision
                router.set_weights(Weights(0))
                aborts.append((time.perf_counter() - started) * 1e3)
                leaks += "challenger" in _variants(f"{gateway}/predict", 100)
            results["abort_ms"] = {"median": statistics.median(aborts), "max": max(aborts),
                                   "runs_reaching_the_challenger_after": leaks}  # fmt: skip
            print(f"  median {statistics.median(aborts):.2f} ms, max {max(aborts):.2f} ms; "
                  f"requests on the challenger afterwards: {leaks}", flush=True)  # fmt: skip

            print("rollback: decision to all traffic on the warm previous champion", flush=True)
            switches, strays = [], 0
            previous = ModelRef("bench", "1", None, "")
            urls = {v: f"http://127.0.0.1:{ports[v]}" for v in ("champion", "challenger")}
            for _ in range(30):
                # serving v2, v1 warm at weight 0: what `modelship serve` sets up
                router._call("PUT", "/admin/backends", {
                    "champion": {"url": urls["champion"], "version": "2"},
                    "challenger": {"url": urls["challenger"], "version": "1"}})  # fmt: skip
                started = time.perf_counter()  # the monitor's rollback decision
                switch_traffic(router, previous)
                switches.append((time.perf_counter() - started) * 1e3)
                backends = router.describe()["backends"]
                assert list(backends) == ["champion"] and backends["champion"]["version"] == "1"
                strays += _variants(f"{gateway}/predict", 100) != {"champion"}
            results["rollback_ms"] = {"median": statistics.median(switches),
                                      "max": max(switches), "runs_with_strays": strays}  # fmt: skip
            print(f"  median {statistics.median(switches):.2f} ms, max {max(switches):.2f} ms; "
                  f"runs where a request missed the previous champion: {strays}", flush=True)  # fmt: skip
            router._call("PUT", "/admin/backends", {
                "champion": {"url": urls["champion"], "version": "1"},
                "challenger": {"url": urls["challenger"], "version": "2"}})  # fmt: skip

            print("crash: the challenger killed at 50% under 200 req/s", flush=True)
            router.set_weights(Weights(50))

            def crash() -> None:
                # BentoML's workers run in their own process groups: kill the whole tree
                import psutil

                root = psutil.Process(procs["challenger"].pid)
                for p in [*root.children(recursive=True), root]:
                    p.kill()

            timer = threading.Timer(2.0, crash)
            timer.start()
            crashed = _load(f"{gateway}/predict", bodies, 200, 6.0)
            timer.join()
            with urllib.request.urlopen(f"{gateway}/stats") as r:
                retried = json.loads(r.read())["retried"]
            ejected = not router.describe()["backends"]["challenger"]["healthy"]
            results["crash"] = {"sent": crashed["sent"], "errors": crashed["errors"],
                                "retried_on_champion": retried, "ejected": ejected}  # fmt: skip
            print(f"  {crashed['sent']} requests, errors {crashed['errors'] or 'none'}, "
                  f"retried on the champion: {retried}, ejected: {ejected}", flush=True)  # fmt: skip
        finally:
            for proc in procs.values():
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(20)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
