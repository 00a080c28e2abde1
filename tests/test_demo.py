"""The main job: `modelship demo` on a fresh embedded store, as the README runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import cli

pytestmark = pytest.mark.slow


def test_demo_deploys_three_versions_and_rejects_the_degraded_one(tmp_path: Path) -> None:
    proc = cli(tmp_path, "demo", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = json.loads(proc.stdout)
    assert [s["outcome"] for s in summaries] == ["passed", "passed", "rejected"]
    assert summaries[2]["rejected_at"] == "validate"
    optimize = {s["version"]: s["stages"][1] for s in summaries}
    assert optimize["1"]["name"] == "optimize" and optimize["1"]["passed"]
    assert optimize["3"]["skipped"]  # not run after a failed validation
    package = {s["version"]: s["stages"][2] for s in summaries}
    assert package["1"]["name"] == "package" and package["1"]["passed"]
    bento = {c["name"]: c for c in package["2"]["checks"]}["package.bento"]["measured"]
    assert bento.startswith("modelship-breast-cancer:v2-") and package["3"]["skipped"]
    assert "vs_champion" in summaries[2]["reason"]
    rollout = {s["version"]: s["stages"][4] for s in summaries}
    assert "no champion yet" in rollout["1"]["reason"]  # v1: promoted at once
    assert rollout["2"]["passed"] and not rollout["2"]["skipped"]  # v2: a canary against v1
    assert "every step passed" in rollout["2"]["reason"] and rollout["3"]["skipped"]
    assert "rejected at validate" in proc.stderr  # the human view went to stderr
    status = json.loads(cli(tmp_path, "status", "breast-cancer", "--json").stdout)
    by_version = {v["version"]: v for v in status["versions"]}
    assert by_version["3"]["state"] == "rejected"
    # production: v2 served, then rolled back to v1 by the drift monitor on shifted traffic
    assert by_version["1"]["aliases"] == ["champion"] and by_version["2"]["aliases"] == []
    assert (
        by_version["2"]["state"] == "rolled_back"
        and "in a row drifted" in by_version["2"]["reason"]
    )
    assert "sent 600 requests drawn like the reference data: 0 failed" in proc.stderr
    assert "rolled back v2 to v1 (gateway" in proc.stderr
    # a second run starts over instead of piling up versions
    again = cli(tmp_path, "demo", "--json", timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [s["version"] for s in json.loads(again.stdout)] == ["1", "2", "3"]
