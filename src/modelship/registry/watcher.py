"""Watch the registry where webhooks are unavailable (a file or SQLite store): poll for new
versions and alias moves, start one deployment per event, and never re-trigger after a restart.

The comparison is pure (:func:`changes`); the cursor (what was already seen) is a JSON file
written after each event is handled, so a watcher killed mid-way repeats at most that event.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from modelship.core.files import write_atomic
from modelship.registry.shared_state import LOCK_PREFIX

#: aliases whose move starts a deployment (champion/previous are moved by modelship itself)
WATCHED_ALIASES = ("challenger",)
WATCHED_STAGES = ("Staging",)


@dataclass(frozen=True)
class RegistryEvent:
    kind: str  # model_version.created | model_version_alias.created | model_version.stage_transitioned
    model: str
    version: str
    alias: str | None = None
    stage: str | None = None

    def key(self) -> str:
        return f"{self.kind}:{self.model}:{self.version}:{self.alias or self.stage or ''}"


@dataclass
class ModelSnapshot:
    versions: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    stages: dict[str, str] = field(default_factory=dict)


#: {"models": {name: {"max_version": int, "aliases": {...}, "stages": {...}}}}
Cursor = dict[str, Any]


def baseline(snapshot: dict[str, ModelSnapshot]) -> Cursor:
    """The cursor of a watcher starting fresh: everything there now counts as seen, so a new
    watcher does not deploy every existing version; models registered later are new."""
    return {
        "models": {
            model: {
                "max_version": max((int(v) for v in snap.versions), default=0),
                "aliases": dict(snap.aliases),
                "stages": dict(snap.stages),
            }
            for model, snap in snapshot.items()
        }
    }


def changes(cursor: Cursor, snapshot: dict[str, ModelSnapshot]) -> list[RegistryEvent]:
    """Events between what was seen (``cursor``) and the registry now."""
    events: list[RegistryEvent] = []
    for model, snap in sorted(snapshot.items()):
        seen = cursor["models"].get(model, {})
        newest = int(seen.get("max_version", 0))
        for version in sorted(snap.versions, key=int):
            if int(version) > newest:
                events.append(RegistryEvent("model_version.created", model, version))
        for alias in WATCHED_ALIASES:
            now = snap.aliases.get(alias)
            if now is not None and now != seen.get("aliases", {}).get(alias):
                events.append(RegistryEvent("model_version_alias.created", model, now, alias=alias))
        for version, stage in sorted(snap.stages.items()):
            if stage in WATCHED_STAGES and seen.get("stages", {}).get(version) != stage:
                events.append(
                    RegistryEvent("model_version.stage_transitioned", model, version, stage=stage)
                )
    return events


def advance(cursor: Cursor, handled: RegistryEvent) -> Cursor:
    """The cursor once ``handled`` has been handled."""
    models = {model: dict(state) for model, state in cursor["models"].items()}
    state = models.setdefault(handled.model, {"max_version": 0, "aliases": {}, "stages": {}})
    if handled.kind == "model_version.created":
        state["max_version"] = max(int(state.get("max_version", 0)), int(handled.version))
    elif handled.alias:
        state["aliases"] = {**state.get("aliases", {}), handled.alias: handled.version}
    elif handled.stage:
        state["stages"] = {**state.get("stages", {}), handled.version: handled.stage}
    return {**cursor, "models": models}


def snapshot(client: MlflowClient, models: Iterable[str] | None = None) -> dict[str, ModelSnapshot]:
    names = (
        list(models)
        if models
        else [
            m.name for m in client.search_registered_models() if not m.name.startswith(LOCK_PREFIX)
        ]
    )  # a lease (registry/shared_state.py) is not a model
    out: dict[str, ModelSnapshot] = {}
    for name in names:
        versions = client.search_model_versions(f"name = '{name}'")
        aliases = {a: str(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}
        out[name] = ModelSnapshot(
            versions=[str(v.version) for v in versions],
            aliases=aliases,
            stages={
                str(v.version): v.current_stage
                for v in versions
                if v.current_stage not in (None, "None")
            },
        )
    return out


class CursorFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Cursor | None:
        if not self.path.exists():
            return None
        data: Cursor = json.loads(self.path.read_text())
        return data

    def save(self, cursor: Cursor) -> None:
        # a watcher killed mid-write leaves the old cursor, never half of one
        write_atomic(self.path, json.dumps(cursor, indent=2, sort_keys=True))


def poll_once(
    client: MlflowClient,
    cursor_file: CursorFile,
    handle: Callable[[RegistryEvent], None],
    models: Iterable[str] | None = None,
) -> list[RegistryEvent]:
    """One round: handle each new event and record it as seen; the first round only looks."""
    snap = snapshot(client, models)
    cursor = cursor_file.load()
    if cursor is None:
        cursor_file.save(baseline(snap))
        return []
    events = changes(cursor, snap)
    started: set[tuple[str, str]] = set()
    for event in events:
        # a version registered and made challenger in one round is deployed once
        if (event.model, event.version) not in started:
            handle(event)
            started.add((event.model, event.version))
        cursor = advance(cursor, event)
        cursor_file.save(cursor)
    return events
