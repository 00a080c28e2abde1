"""The load test's pictures (PNG) and one HTML page that holds them with the figures."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from modelship.components.charts import pyplot, save
from modelship.components.serving.loadgen import LoadResult


def over_time(runs: dict[str, LoadResult], slo_ms: float, out: Path) -> Path:
    """Per second of the schedule: p50, p99 and max latency (log), and the rate achieved."""
    plt = pyplot()
    fig, (lat, rate) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=[3, 1])
    for (name, result), color in zip(
        runs.items(), ["tab:blue", "tab:orange", "tab:green"], strict=False
    ):
        rows = result.timeline()
        if not rows:
            continue
        t = [r["t_s"] for r in rows]
        lat.plot(t, [r["p99_ms"] for r in rows], color=color, marker=".", label=f"{name} p99")
        lat.plot(t, [r["p50_ms"] for r in rows], color=color, linestyle=":", label=f"{name} p50")
        lat.plot(t, [r["max_ms"] for r in rows], color=color, alpha=0.3, label=f"{name} max")
        rate.plot(t, [r["rate"] - r["errors"] for r in rows], color=color, label=f"{name} ok/s")
        rate.axhline(result.target_rate, color=color, linestyle="--", linewidth=0.8)
    lat.axhline(slo_ms, color="tab:red", linestyle="--", label=f"SLO p99 {slo_ms:g} ms")
    lat.set_yscale("log")
    lat.set_ylabel("latency from due time (ms)")
    lat.legend(fontsize=7, ncol=2)
    lat.set_title("Latency over time (open loop, measured from each request's due time)")
    rate.set_ylabel("req/s")
    rate.set_xlabel("seconds after warm-up")
    rate.legend(fontsize=7)
    return save(fig, out)


def histogram(runs: dict[str, LoadResult], out: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    for (name, result), color in zip(
        runs.items(), ["tab:blue", "tab:orange", "tab:green"], strict=False
    ):
        edges, counts = result.histogram.buckets_ms()
        if len(edges) == 0:
            continue
        ax.step(edges, counts, where="post", color=color, label=name)
        for q in ("p50", "p99", "p99.9"):
            value = result.histogram.summary_ms()[q]
            ax.axvline(value, color=color, linestyle=":", linewidth=0.8)
            ax.annotate(q, (value, counts.max()), fontsize=7, color=color, rotation=90, va="top")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, buckets 0.5% wide)")
    ax.set_ylabel("requests")
    ax.set_title("Latency histogram")
    ax.legend(fontsize=8)
    return save(fig, out)


def find_max_chart(probes: list[dict[str, Any]], slo_ms: float, out: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ordered = sorted(probes, key=lambda p: p["target_rate"])
    ax.plot([p["target_rate"] for p in ordered], [p["latency_ms"]["p99"] for p in ordered],
            marker="o")  # fmt: skip
    for p in ordered:
        ax.annotate("ok" if p["passed"] else "fail", (p["target_rate"], p["latency_ms"]["p99"]),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.axhline(slo_ms, color="tab:red", linestyle="--", label=f"SLO p99 {slo_ms:g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate (req/s)")
    ax.set_ylabel("p99 (ms)")
    ax.set_title("Find-max: p99 at each probed rate")
    ax.legend(fontsize=8)
    return save(fig, out)


def page(title: str, figures: dict[str, Any], images: list[Path], out: Path) -> Path:
    """One self-contained HTML page: the pictures inline and every figure as JSON."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<body style='font-family:sans-serif;max-width:960px;margin:auto'>",
             f"<h1>{html.escape(title)}</h1>"]  # fmt: skip
    for image in images:
        data = base64.b64encode(image.read_bytes()).decode()
        parts.append(f"<p><img style='max-width:100%' src='data:image/png;base64,{data}'></p>")
    parts.append("<h2>Figures</h2><pre>" + html.escape(json.dumps(figures, indent=2)) + "</pre>")
    out.write_text("\n".join(parts))
    return out
