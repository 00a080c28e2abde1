"""``modelship status``: where each version of a model stands."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from modelship.core.tags import TAG_DIGEST, TAG_REASON, TAG_RUN, TAG_STATE
from modelship.registry.client import Registry


def model_status(model: str, registry: Registry | None = None) -> dict[str, Any]:
    registry = registry or Registry()
    versions = registry.versions(model)
    if not versions:
        registry.resolve(model)  # raises the registry's clear "no such model" error
    return {
        "model": model,
        "versions": [
            {
                "version": v.version,
                "aliases": sorted(v.aliases),
                "state": v.tags.get(TAG_STATE),
                "reason": v.tags.get(TAG_REASON),
                "digest": v.tags.get(TAG_DIGEST),
                "deployment_run": v.tags.get(TAG_RUN),
            }
            for v in versions
        ],
    }


_STATE_STYLE = {"rejected": "red", "rolled_back": "red", "promoted": "green", "validated": "cyan"}


def render_status(report: dict[str, Any]) -> Table:
    table = Table(title=f"{report['model']}", title_justify="left")
    for col in ("version", "aliases", "state", "reason", "digest"):
        table.add_column(col, overflow="fold", max_width=70 if col == "reason" else None)
    for v in report["versions"]:
        state = v["state"] or "registered"
        style = _STATE_STYLE.get(state, "")
        table.add_row(
            v["version"],
            ", ".join(v["aliases"]),
            f"[{style}]{state}[/]" if style else state,
            _short(v["reason"] or ""),
            (v["digest"] or "")[:19],
        )
    return table


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
