"""The registry watcher: pure change detection, a real store, and `modelship watch` end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelship.core.settings import Settings
from modelship.core.tags import TAG_RUN
from modelship.registry.client import Registry
from modelship.registry.watcher import (
    CursorFile,
    ModelSnapshot,
    RegistryEvent,
    advance,
    baseline,
    changes,
    poll_once,
)
from tests.support import breast_cancer, cli, register_forest, settings_for


def _snap(
    versions: list[str], aliases: dict[str, str] | None = None, stages: dict[str, str] | None = None
) -> ModelSnapshot:
    return ModelSnapshot(versions, aliases or {}, stages or {})


def test_a_fresh_watcher_sees_no_events_in_what_exists() -> None:
    snap = {"m": _snap(["1", "2"], {"challenger": "2"}, {"1": "Staging"})}
    assert changes(baseline(snap), snap) == []


def test_new_versions_alias_moves_and_staging_are_events() -> None:
    cursor = baseline({"m": _snap(["1"])})
    now = {
        "m": _snap(["1", "2", "3"], {"challenger": "2", "champion": "1"}, {"3": "Staging"}),
        "new": _snap(["1"]),
    }
    kinds = [(e.kind, e.model, e.version) for e in changes(cursor, now)]
    assert kinds == [
        ("model_version.created", "m", "2"),
        ("model_version.created", "m", "3"),
        ("model_version_alias.created", "m", "2"),  # champion moves are modelship's own
        ("model_version.stage_transitioned", "m", "3"),
        ("model_version.created", "new", "1"),  # registered after the watcher started
    ]


def test_handled_events_do_not_come_back() -> None:
    cursor = baseline({"m": _snap(["1"])})
    now = {"m": _snap(["1", "2"], {"challenger": "2"})}
    for event in changes(cursor, now):
        cursor = advance(cursor, event)
    assert changes(cursor, now) == []


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    """A fresh home per test (tmp_path/home, where the CLI runs too), not conftest's per module."""
    return settings_for(tmp_path / "home")


def test_poll_against_a_real_store_survives_a_restart(settings: Settings, tmp_path: Path) -> None:
    data = breast_cancer()
    register_forest(settings, "wm", data)
    handled: list[RegistryEvent] = []
    cursor = CursorFile(tmp_path / "cursor.json")
    client = Registry().client
    assert poll_once(client, cursor, handled.append) == []  # first poll records what is there
    v2 = register_forest(settings, "wm", data)
    client.set_registered_model_alias("wm", "challenger", v2)
    events = poll_once(client, cursor, handled.append)
    assert {e.kind for e in events} == {"model_version.created", "model_version_alias.created"}
    assert [(e.model, e.version) for e in handled] == [("wm", v2)]  # one deployment, not two
    restarted = CursorFile(tmp_path / "cursor.json")
    assert poll_once(client, restarted, handled.append) == []
    assert len(handled) == 1


@pytest.mark.slow
def test_watch_once_deploys_a_new_version(settings: Settings, tmp_path: Path) -> None:
    data: Any = breast_cancer()
    register_forest(settings, "breast-cancer", data)
    first = cli(tmp_path / "home", "watch", "--once")
    assert first.returncode == 0, first.stderr
    assert "existing versions recorded" in first.stderr
    version = register_forest(settings, "breast-cancer", data)
    second = cli(tmp_path / "home", "watch", "--once")
    assert second.returncode == 0, second.stderr
    assert f"model_version.created: breast-cancer v{version}" in second.stderr
    assert f"breast-cancer v{version}: passed" in second.stderr
    assert TAG_RUN in Registry().resolve("breast-cancer", version=version).tags
    third = cli(tmp_path / "home", "watch", "--once")
    assert "no new versions" in third.stderr
