"""Wall time of `modelship deploy` on the demo model: in total, per stage, per validation step.

    .venv/bin/python benchmarks/deploy.py [--repeats 5]

Sets up a private embedded store (the demo's three versions, v1 as champion), then deploys v2
(so the champion is evaluated too) ``--repeats`` times with the CLI as a process, and prints the
median and spread of each figure. Stage and step times come from the run's event file.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELSHIP = str(Path(sys.executable).parent / "modelship")


def _setup(home: Path) -> None:
    os.environ["MODELSHIP_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from modelship.core.settings import Settings
    from modelship.demo import MODEL, register_version
    from modelship.registry.client import Registry

    settings = Settings.from_env()
    settings.prepare()
    with contextlib.redirect_stderr(io.StringIO()):
        for kind in ("forest", "lightgbm"):
            register_version(kind, settings, kind)
    Registry().promote(Registry().resolve(MODEL, version="1"))


def _timings(events_file: Path) -> dict[str, float]:
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    out: dict[str, float] = {}
    marks: list[tuple[str, float]] = []
    for e in events:
        if e["status"] == "end":
            out[f"stage {e['stage']}"] = e["duration_s"]
        if e["stage"] == "validate" and e["status"] in ("start", "step", "end"):
            marks.append((e.get("step", e["status"]).split(":")[0], e["t"]))
    for (name, t0), (_, t1) in itertools.pairwise(marks):
        out[f"  validate: {name}"] = out.get(f"  validate: {name}", 0.0) + t1 - t0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelship-bench-") as tmp:
        home = Path(tmp)
        _setup(home)
        rows: dict[str, list[float]] = {}
        env = {**os.environ, "MODELSHIP_HOME": str(home)}
        for i in range(args.repeats):
            t0 = time.perf_counter()
            proc = subprocess.run(
                [MODELSHIP, "deploy", "breast-cancer", "--version", "2", "--json"],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.exit(f"deploy failed ({proc.returncode}): {proc.stderr[-2000:]}")
            summary = json.loads(proc.stdout)
            events = Path(summary["log"]).with_suffix("").with_suffix(".events.jsonl")
            stages = _timings(events)
            overhead = wall - sum(v for k, v in stages.items() if k.startswith("stage "))
            figures = {
                "total (CLI process)": wall,
                "process start-up and KFP orchestration (total - stages)": overhead,
                **stages,
            }
            for key, value in figures.items():
                rows.setdefault(key, []).append(value)
            print(f"run {i + 1}/{args.repeats}: {wall:.2f} s", file=sys.stderr)
    print(
        f"\n`modelship deploy breast-cancer --version 2` (champion v1 evaluated too), {args.repeats} runs"
    )
    print("| what | median s | min s | max s |\n| --- | --- | --- | --- |")
    for key, values in rows.items():
        print(
            f"| {key} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |"
        )


if __name__ == "__main__":
    main()
