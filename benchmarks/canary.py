"""The canary analysis, measured: how often it aborts an identical copy, how often it catches a
worse version, and how long it takes to decide, with the paired check beside the unpaired one.

    .venv/bin/python benchmarks/canary.py [--runs 10] [--rate 300]

Three versions of the demo's model are packaged and served once (tests/canary.py): the
champion (a random forest), a byte-identical copy of it, and a version that answers the
champion's labels with a tenth of them flipped. Each run is a whole canary (a step at 10% or
50%, alternating, for 3 s, then 100%) behind a fresh gateway, with open-loop traffic of
validation rows in an order set by the run's seed, judged by:

- **paired** (the default): both versions' answers to the same mirrored requests;
- **distribution**: Evidently's Jensen-Shannon distance between the two versions' logged
  predictions over different requests (the check before paired answers, and the one on Seldon
  Core v2 and KServe).

For each check and version: runs, aborts, the abort rate, and the median and largest seconds
from the canary's start to its decision.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modelship.components.rollout.state import Phase
from tests.canary import canary, package_versions, serving
from tests.support import breast_cancer, settings_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=300.0)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="modelship-bench-") as tmp:
        home = Path(tmp)
        settings = settings_for(home)
        print("packaging champion, identical copy and label flipper...", flush=True)
        versions = package_versions(settings, breast_cancer(), home / "packages")
        logs = home / "serve"
        logs.mkdir()
        with serving(home, versions, logs) as urls:
            checks: tuple[Literal["paired", "distribution"], ...] = ("paired", "distribution")
            for check in checks:
                for who in ("copy", "flipper"):
                    aborted, seconds = 0, []
                    for seed in range(args.runs):
                        work = home / "runs" / f"{check}-{who}-{seed}"
                        work.mkdir(parents=True)
                        final, took = canary(
                            urls, versions, who, weight=10 if seed % 2 else 50, seed=seed,
                            rate=args.rate, tmp=work, settings=settings, check=check,
                            logs=logs if check == "distribution" else None,
                        )  # fmt: skip
                        aborted += final.phase is Phase.ABORTED
                        seconds.append(took)
                    row = {"runs": args.runs, "aborted": aborted,
                           "abort_rate": aborted / args.runs,
                           "median_s": round(statistics.median(seconds), 2),
                           "max_s": round(max(seconds), 2)}  # fmt: skip
                    results[f"{check}/{who}"] = row
                    print(f"  {check:12} {who:8} aborted {aborted}/{args.runs} "
                          f"({row['abort_rate']:.0%}), decided in {row['median_s']} s "
                          f"(max {row['max_s']} s)", flush=True)  # fmt: skip
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
