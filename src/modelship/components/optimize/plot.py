"""The optimize stage's picture: single-row latency of each runtime, log scale, choice marked."""

from __future__ import annotations

from pathlib import Path

from modelship.components.charts import pyplot, save


def latency_chart(
    p50_us: dict[str, float], p99_us: dict[str, float], chosen: str | None, out: Path
) -> Path:
    plt = pyplot()
    names = list(p50_us)
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(names) + 1.2))
    colors = ["tab:green" if n == chosen else "tab:gray" for n in names]
    ax.barh(
        names, [p99_us[n] for n in names], color="none", edgecolor=colors, hatch="//", label="p99"
    )
    ax.barh(names, [p50_us[n] for n in names], color=colors, label="p50")
    for y, name in enumerate(names):
        ax.annotate(
            f"p50 {p50_us[name]:,.1f} us, p99 {p99_us[name]:,.1f} us",
            (p99_us[name], y),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlim(right=max(p99_us.values()) * 40)  # room for the labels
    ax.set_xlabel("single-row latency (microseconds, log scale)")
    ax.invert_yaxis()
    ax.set_title(
        "optimize: native pyfunc vs ONNX Runtime variants"
        + (f" (chosen: {chosen})" if chosen else ""),
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8)
    return save(fig, out)
