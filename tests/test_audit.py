"""The audit trail: every change to what serves, in MLflow beside the model, hash-chained, shown
by `modelship audit MODEL` and checked by `--verify`. Real MLflow (the embedded store)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from modelship.components.rollout.stage import MlflowRollouts
from modelship.core.settings import Settings
from modelship.registry.audit import ACTOR_ENV, FOLDER, AuditTrail, verify
from modelship.registry.client import Registry
from tests.support import cli, register_forest

MODEL = "audited"


@pytest.fixture(scope="module")
def trail(home: Path, settings: Settings, data: Any) -> dict[str, Any]:
    registry = Registry()
    v1, v2 = (register_forest(settings, MODEL, data) for _ in range(2))
    os.environ[ACTOR_ENV] = "webhook delivery d-42"
    try:
        registry.promote(registry.resolve(MODEL, version=v1))
    finally:
        os.environ.pop(ACTOR_ENV)
    registry.set_challenger(registry.resolve(MODEL, version=v2))
    MlflowRollouts(registry).rolled_back(MODEL, v2, "error rate 4% over 1%")
    return {"v1": v1, "v2": v2}


def test_each_change_is_one_entry_with_who_asked(home: Path, trail: dict[str, Any]) -> None:
    proc = cli(home, "audit", MODEL, "--json")
    assert proc.returncode == 0, proc.stderr
    entries = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(e["action"], e["version"]) for e in entries] == [
        ("promoted", trail["v1"]), ("canary started", trail["v2"]),
        ("canary aborted", trail["v2"]),
    ]  # fmt: skip
    assert entries[0]["actor"] == "webhook delivery d-42"
    assert "@" in entries[1]["actor"]  # user@host (pid) of whoever ran it
    assert entries[2]["detail"]["reason"] == "error rate 4% over 1%"
    assert [e["prev"] for e in entries[1:]] == [e["hash"] for e in entries[:-1]]
    table = cli(home, "audit", MODEL, "--verify")
    assert table.returncode == 0 and "canary aborted" in table.stdout
    assert "the chain of 3 entries is intact" in table.stderr


def test_an_edited_entry_is_found_by_verify(
    home: Path, settings: Settings, trail: dict[str, Any]
) -> None:
    client = MlflowClient()
    audit = AuditTrail(client, settings, MODEL)
    entries = audit.entries()
    # someone with write access to the artifacts rewrites the abort's reason in place
    name = sorted(Path(f.path).name for f in client.list_artifacts(audit.state.run_id, FOLDER))[-1]
    forged = {**entries[-1], "detail": {"reason": "promoted by hand"}}
    client.log_text(audit.state.run_id, json.dumps(forged), f"{FOLDER}/{name}")
    proc = cli(home, "audit", MODEL, "--verify")
    assert proc.returncode == 1
    assert f"entry {entries[-1]['seq']}: altered" in proc.stderr
    # a forger who also fixes the hash still breaks the link to the model's head tag
    from modelship.registry.audit import entry_hash

    forged["hash"] = entry_hash(forged)
    problems = verify([*entries[:-1], forged], audit.head())
    assert [p.what for p in problems] and "names" in problems[-1].what
    client.log_text(audit.state.run_id, json.dumps(entries[-1], indent=2), f"{FOLDER}/{name}")
