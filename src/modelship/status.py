"""``modelship status``: where each version of a model stands."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from modelship.core.tags import TAG_DIGEST, TAG_REASON, TAG_RUN, TAG_STATE
from modelship.core.verdict import ModelState
from modelship.registry.client import Registry
from modelship.registry.deployments import DeploymentRun


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
                "deployment_run": v.tags.get(TAG_RUN),
                "digest": v.tags.get(TAG_DIGEST),
                **_state(registry, v.version, v.tags),
            }
            for v in versions
        ],
    }


def _state(registry: Registry, version: str, tags: dict[str, str]) -> dict[str, str | None]:
    """The version's state tag, or ``interrupted`` where its deploy was killed (a killed
    process records nothing: its run still says RUNNING, its process is gone)."""
    state, reason, run = tags.get(TAG_STATE), tags.get(TAG_REASON), tags.get(TAG_RUN)
    if run and state not in _SETTLED:
        why = DeploymentRun(registry.client, run).interrupted()
        if why is not None:
            return {
                "state": str(ModelState.INTERRUPTED),
                "reason": f"interrupted after {state or 'registration'}: {why}; "
                f"deploy it again to start over (modelship deploy ... --version {version})",
            }
    return {"state": state, "reason": reason}


#: states a deploy ends in: their run is closed, nothing to look up
_SETTLED = {str(s) for s in (ModelState.PROMOTED, ModelState.REJECTED, ModelState.ROLLED_BACK,
                             ModelState.INTERRUPTED)}  # fmt: skip


_STATE_STYLE = {"rejected": "red", "rolled_back": "red", "promoted": "green", "validated": "cyan",
                "interrupted": "yellow"}  # fmt: skip


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
