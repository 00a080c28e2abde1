"""The modelship Bento's cost over a raw ONNX Runtime call, and what adaptive batching buys.

    .venv/bin/python benchmarks/package.py [--repeats 3] [--seconds 8]

A RandomForest of 200 trees (breast_cancer) is registered and deployed with ``modelship deploy``
into a scratch home, which builds its Bento. Then, in this one run, with every server pinned to
core 0 and this client to core 1 (where the machine has two):

- one row, one request at a time (low load): p50 and p99 of a raw ``session.run`` in this
  process, of the bare Starlette + ONNX Runtime server (benchmarks/bare_server.py), and of the
  Bento served by ``bentoml serve`` (its fast path with and without batching, and BentoML's own
  request path, ``package.server: bentoml``); the Bento's overhead is its p50 minus the raw
  call's;
- throughput at a fixed concurrency (closed loop, aiohttp), one row a request, the same three
  servers.

Each figure is the median over ``--repeats`` server starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL = "bench-forest"


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin(cmd: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *cmd] if shutil.which("taskset") and os.cpu_count() else cmd


def _deploy(home: Path) -> tuple[str, Path]:
    """Register the forest and deploy it; the Bento's tag and its folder."""
    env = {**os.environ, "MODELSHIP_HOME": str(home)}
    script = f"""
import contextlib, io, mlflow
from mlflow.models import infer_signature
from sklearn.ensemble import RandomForestClassifier
from modelship.demo import split
from modelship.datasets import log_datasets
from modelship.core.settings import Settings
from modelship.registry.client import Registry
from modelship.registry.experiments import ensure_experiment
s = Settings.from_env(); s.prepare()
x, y, ref, val = split()
model = RandomForestClassifier(200, random_state=0).fit(x, y["target"])
exp = ensure_experiment(Registry().client, s, "bench")
with mlflow.start_run(experiment_id=exp), contextlib.redirect_stderr(io.StringIO()):
    mlflow.sklearn.log_model(model, name="model", signature=infer_signature(x, model.predict(x)),
        registered_model_name="{MODEL}", skops_trusted_types=["sklearn.tree._tree.Tree"])
    log_datasets(val, ref)
"""
    subprocess.run([sys.executable, "-c", script], env=env, check=True, cwd=ROOT)
    policy = home / "bench-policy.yaml"
    policy.write_text("package:\n  image: never\n")
    done = subprocess.run(
        [str(BIN / "modelship"), "deploy", MODEL, "--json", "--policy", str(policy)],
        env=env, capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"deploy failed: {done.stderr[-2000:]}")
    summary = json.loads(done.stdout)
    checks = {c["name"]: c for s in summary["stages"] for c in s["checks"]}
    tag = str(checks["package.bento"]["measured"])
    name, version = tag.split(":")
    return tag, home / "bentoml" / "bentos" / name / version


def _wait(url: str, proc: subprocess.Popen[Any], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.args}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} never became ready")


@contextmanager
def _server(
    cmd: list[str], env: dict[str, str], port: int, ready: str = "/readyz"
) -> Iterator[str]:
    log = Path(env["MODELSHIP_HOME"]) / f"server-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(_pin(cmd, 0), env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        _wait(f"http://127.0.0.1:{port}{ready}", proc)
        yield f"127.0.0.1:{port}"
    except BaseException:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait(30)


def _sequential(host: str, bodies: list[bytes], n: int) -> list[float]:
    name, port = host.split(":")
    conn = http.client.HTTPConnection(name, int(port))
    times = []
    for i in range(n + 200):
        t = time.perf_counter()
        conn.request(
            "POST", "/predict", bodies[i % len(bodies)], {"content-type": "application/json"}
        )
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"{host} answered {response.status}: {response.read()[:300]!r}")
        if i >= 200:  # warm-up excluded
            times.append(time.perf_counter() - t)
    return times


async def _closed_loop(host: str, bodies: list[bytes], concurrency: int, seconds: float) -> float:
    import aiohttp

    done = 0
    stop = time.perf_counter() + seconds
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < stop:
                async with session.post(f"http://{host}/predict", data=bodies[i % len(bodies)],
                                        headers=headers) as r:  # fmt: skip
                    await r.read()
                    if r.status == 200:
                        done += 1
                i += concurrency

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return done / (time.perf_counter() - start)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each throughput run")
    parser.add_argument("--requests", type=int, default=3000, help="sequential requests per run")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    import onnxruntime as ort
    from sklearn.datasets import load_breast_cancer

    x = load_breast_cancer().data.astype(np.float32)
    rows = [json.dumps({"inputs": [r.tolist()]}).encode() for r in x[:200]]
    with tempfile.TemporaryDirectory(prefix="modelship-bench-") as tmp:
        home = Path(tmp)
        print("deploying the forest (registers, validates, optimizes, packages)...", flush=True)
        tag, bento = _deploy(home)
        model = bento / "src" / "model" / "model.onnx"
        # copies of the Bento with other serving settings (serving.json is not among the
        # checked model files): batching off, and BentoML's own request path
        variants = {"unbatched": {"batching": {"enabled": False}}, "bentoml": {"server": "bentoml"}}
        homes = {}
        for label, change in variants.items():
            homes[label] = home / label
            shutil.copytree(home / "bentoml", homes[label] / "bentoml")
            rel = bento.relative_to(home / "bentoml") / "src" / "serving.json"
            cfg_path = homes[label] / "bentoml" / rel
            cfg = json.loads(cfg_path.read_text())
            for key, value in change.items():
                cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
            cfg_path.write_text(json.dumps(cfg))

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

        def raw() -> list[float]:
            out = []
            for i in range(args.requests + 200):
                t = time.perf_counter()
                session.run(None, {"input": x[i % 200 : i % 200 + 1]})
                if i >= 200:
                    out.append(time.perf_counter() - t)
            return out

        def bento_cmd(port: int) -> list[str]:
            return [str(BIN / "bentoml"), "serve", tag, "--host", "127.0.0.1", "--port", str(port)]

        def bare_cmd(port: int) -> list[str]:
            return [
                sys.executable,
                str(ROOT / "benchmarks" / "bare_server.py"),
                str(model),
                str(port),
            ]

        def env_for(h: Path) -> dict[str, str]:
            return {**os.environ, "MODELSHIP_HOME": str(h), "BENTOML_HOME": str(h / "bentoml"),
                    "BENTOML_DO_NOT_TRACK": "true", "MODELSHIP_INFERENCE_LOG": str(home / "log")}  # fmt: skip

        servers: dict[str, tuple[Callable[[int], list[str]], dict[str, str]]] = {
            "bare Starlette + ONNX Runtime": (bare_cmd, env_for(home)),
            "modelship Bento, fast path, greedy batching (default)": (bento_cmd, env_for(home)),
            "modelship Bento, fast path, batching off": (bento_cmd, env_for(homes["unbatched"])),
            "modelship Bento, BentoML's request path and batching": (
                bento_cmd,
                env_for(homes["bentoml"]),
            ),
        }
        results: dict[str, dict[str, list[float]]] = {
            name: {"p50": [], "p99": [], "rps": []} for name in ["raw session.run", *servers]
        }
        for r in range(args.repeats):
            t = raw()
            results["raw session.run"]["p50"].append(_pct(t, 50))
            results["raw session.run"]["p99"].append(_pct(t, 99))
            for name, (cmd, env) in servers.items():
                port = _port()
                with _server(cmd(port), env, port) as host:
                    t = _sequential(host, rows, args.requests)
                    rps = asyncio.run(_closed_loop(host, rows, args.concurrency, args.seconds))
                results[name]["p50"].append(_pct(t, 50))
                results[name]["p99"].append(_pct(t, 99))
                results[name]["rps"].append(rps)
                print(
                    f"  run {r + 1}: {name}: p50 {_pct(t, 50):.3f} ms, {rps:,.0f} req/s", flush=True
                )

    med = {
        k: {m: statistics.median(v) if v else float("nan") for m, v in d.items()}
        for k, d in results.items()
    }
    raw_p50 = med["raw session.run"]["p50"]
    print(f"\nRandomForest 200 trees, one row a request; medians of {args.repeats}; "
          f"throughput closed-loop at concurrency {args.concurrency}\n")  # fmt: skip
    print("| path | p50 ms | p99 ms | added to raw p50 | req/s |")
    print("| --- | --- | --- | --- | --- |")
    for name, m in med.items():
        added = "" if name == "raw session.run" else f"{m['p50'] - raw_p50:.3f} ms"
        rps = "" if np.isnan(m["rps"]) else f"{m['rps']:,.0f}"
        print(f"| {name} | {m['p50']:.3f} | {m['p99']:.3f} | {added} | {rps} |")


if __name__ == "__main__":
    main()
