"""The modelship Bento against `mlflow models serve` and a plain FastAPI server, same model.

    .venv/bin/python benchmarks/serving.py [--common-rate 50] [--probe-s 4]

A RandomForest of 200 trees (breast_cancer) is registered and deployed with ``modelship deploy``
(its Bento is what the package stage built). Then, in this one run, each server is pinned to
core 0 and driven from core 1 by modelship's open-loop generator (one validation row a request,
latency from each request's due time):

- the highest arrival rate at which p99 stays <= 100 ms with under 0.1% errors (rates doubled
  from 25 req/s until a probe fails, then bisected three times);
- p99 at a common rate every server can hold (``--common-rate``);
- at 1,000 req/s for 10 s: p99.9 and max, the figure the tail-latency target is about.

Servers: the modelship Bento (``bentoml serve``), ``mlflow models serve`` of the same version
(local env), a plain FastAPI server with the native scikit-learn model
(benchmarks/fastapi_server.py), and bare Starlette + ONNX Runtime (benchmarks/bare_server.py),
the ceiling. The generator's own limit is shown by its lag behind schedule.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.package import BIN, MODEL, ROOT, _deploy, _port, _server
from modelship.components.serving.loadgen import Phase, run

SLO_MS = 100.0


def _probe(url: str, bodies: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    result = run(url, bodies, [Phase(rate, seconds)], warmup_s=1.0, connections=256, timeout_s=10)
    figures = result.figures()
    figures["ok_slo"] = (
        not figures["stopped"]
        and figures["latency_ms"]["p99"] <= SLO_MS
        and figures["error_rate"] <= 0.001
        and figures["achieved_rate"] >= 0.95 * rate
    )
    return figures


def _find_max(
    url: str, bodies: list[bytes], seconds: float, limit: float, start: float
) -> tuple[float, float]:
    """Highest passing rate, and the client's worst lag over the probes (ms)."""
    good, bad, rate, lag = 0.0, None, start, 0.0
    for _ in range(14):
        f = _probe(url, bodies, rate, seconds)
        lag = max(lag, f["client_lag_ms"])
        print(f"    {rate:8.0f} req/s: p99 {f['latency_ms']['p99']:9.2f} ms, errors "
              f"{f['error_rate']:.2%}, lag {f['client_lag_ms']:.0f} ms -> {'ok' if f['ok_slo'] else 'no'}",
              flush=True)  # fmt: skip
        if f["ok_slo"]:
            good = rate
        else:
            bad = rate
        if bad is None:
            if rate >= limit:
                break
            rate *= 2
        elif bad - good <= max(good * 0.1, 10):
            break
        else:
            rate = (good + bad) / 2
    return good, lag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--common-rate", type=float, default=50.0)
    parser.add_argument("--probe-s", type=float, default=4.0)
    parser.add_argument("--limit", type=float, default=16000.0)
    args = parser.parse_args()
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory(prefix="modelship-serving-") as tmp:
        home = Path(tmp)
        print("deploying the forest (registers, validates, optimizes, packages)...", flush=True)
        tag, bento = _deploy(home)
        model = bento / "src" / "model" / "model.onnx"
        path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"  # mlflow serve runs `uvicorn`
        env = {**os.environ, "PATH": path, "MODELSHIP_HOME": str(home), "BENTOML_HOME": str(home / "bentoml"),
               "BENTOML_DO_NOT_TRACK": "true", "MODELSHIP_INFERENCE_LOG": str(home / "log"),
               "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}  # fmt: skip
        columns = json.loads((bento / "src" / "serving.json").read_text())["columns"]
        from modelship.demo import split

        _, _, _, validation = split()
        records = validation[columns].head(200).to_dict(orient="records")
        rows = validation[columns].head(200).to_numpy().tolist()
        inputs = [json.dumps({"inputs": [r]}).encode() for r in records]
        # name: (command, bodies, ready path, request path, first find-max rate)
        servers: dict[str, tuple[Callable[[int], list[str]], list[bytes], str, str, float]] = {
            "modelship Bento (bentoml serve)": (
                lambda p: [str(BIN / "bentoml"), "serve", tag, "--host", "127.0.0.1", "--port", str(p)],
                inputs, "/readyz", "/predict", 400.0,
            ),
            "mlflow models serve": (
                lambda p: [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}/1",
                           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(p), "-w", "1"],
                [json.dumps({"dataframe_records": [r]}).encode() for r in records],
                "/ping", "/invocations", 25.0,
            ),
            "plain FastAPI + native model": (
                lambda p: [sys.executable, str(ROOT / "benchmarks" / "fastapi_server.py"),
                           f"models:/{MODEL}/1", str(p)],
                inputs, "/readyz", "/predict", 25.0,
            ),
            "bare Starlette + ONNX Runtime": (
                lambda p: [sys.executable, str(ROOT / "benchmarks" / "bare_server.py"), str(model), str(p)],
                [json.dumps({"inputs": [r]}).encode() for r in rows], "/readyz", "/predict", 400.0,
            ),
        }  # fmt: skip
        table = []
        for name, (cmd, bodies, ready, route, start) in servers.items():
            print(f"{name}:", flush=True)
            port = _port()
            with _server(cmd(port), env, port, ready) as host:
                url = f"http://{host}{route}"
                best, lag = _find_max(url, bodies, args.probe_s, args.limit, start)
                common = _probe(url, bodies, args.common_rate, 10.0)
                at_1000 = _probe(url, bodies, 1000.0, 10.0) if best >= 1000 else None
            table.append((name, best, lag, common, at_1000))
    print(f"\nRandomForest 200 trees, one row a request, server on core 0, client on core 1; "
          f"SLO p99 <= {SLO_MS:g} ms\n")  # fmt: skip
    print(
        f"| server | highest rate within the SLO | p99 at {args.common_rate:g} req/s | "
        "p99 / p99.9 / max at 1,000 req/s | client lag |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name, best, lag, common, at_1000 in table:
        thousand = (f"{at_1000['latency_ms']['p99']} / {at_1000['latency_ms']['p99.9']} / "
                    f"{at_1000['latency_ms']['max']} ms" if at_1000 else "cannot hold it")  # fmt: skip
        print(
            f"| {name} | {best:,.0f} req/s | {common['latency_ms']['p99']} ms | {thousand} | "
            f"{lag:.0f} ms |"
        )
    mlflow_rate = next(b for n, b, *_ in table if n.startswith("mlflow"))
    bento_rate = table[0][1]
    if mlflow_rate:
        print(f"\nBento / mlflow models serve: {bento_rate / mlflow_rate:.0f}x the arrival rate")


if __name__ == "__main__":
    main()
