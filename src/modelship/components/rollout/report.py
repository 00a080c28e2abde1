"""The rollout's record: its status as JSON, and one picture of traffic and analyses."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from modelship.components.charts import pyplot, save
from modelship.components.rollout.state import AnalysisOutcome, RolloutStatus

_COLORS = {
    AnalysisOutcome.SUCCESSFUL: "tab:green",
    AnalysisOutcome.FAILED: "tab:red",
    AnalysisOutcome.ERROR: "tab:purple",
    AnalysisOutcome.INCONCLUSIVE: "tab:gray",
}


def chart(status: RolloutStatus, out: Path) -> Path:
    """The challenger's share over time (each analysis marked), and p99 of both per analysis."""
    plt = pyplot()
    fig, (share, lat) = plt.subplots(2, 1, figsize=(9, 6), height_ratios=[2, 2])
    start = status.started_at
    if status.traffic:
        t = [c[0] - start for c in status.traffic] + [status.updated_at - start]
        w = [c[1] for c in status.traffic] + [status.traffic[-1][1]]
        share.step(t, w, where="post", color="tab:orange", label="challenger %")
        mirror = [c[2] * 100 for c in status.traffic] + [status.traffic[-1][2] * 100]
        if any(mirror):
            share.step(t, mirror, where="post", color="tab:blue", ls="--", label="mirrored %")
    for a in status.analyses:
        share.axvline(a.at - start, color=_COLORS[a.outcome], lw=1.5, alpha=0.8)
    share.set_ylim(-5, 105)
    share.set_ylabel("% of requests")
    share.set_xlabel("seconds since the rollout began (lines: analyses)")
    share.set_title(f"rollout of {status.model} v{status.challenger}: {status.phase}")
    share.legend(loc="upper left")
    names = [f"step {a.step + 1}\n{a.outcome}" for a in status.analyses]
    x = range(len(names))
    for offset, who, color in ((-0.2, "champion", "tab:blue"), (0.2, "challenger", "tab:orange")):
        values = [a.figures.get(f"{who}_p99_ms") for a in status.analyses]
        heights = [v if isinstance(v, int | float) and not math.isnan(v) else 0 for v in values]
        lat.bar([i + offset for i in x], heights, width=0.4, color=color, label=f"{who} p99")
    lat.set_xticks(list(x), names)
    lat.set_ylabel("p99 latency (ms)")
    lat.legend(loc="upper left")
    return save(fig, out)


def write(status: RolloutStatus, snapshot: dict[str, Any], workdir: Path) -> list[Path]:
    data = workdir / "rollout.json"
    record = {"status": status.model_dump(mode="json"), "gateway": snapshot.get("weights")}
    data.write_text(json.dumps(record, indent=2))
    return [data, chart(status, workdir / "rollout.png")]
