"""The main job: `modelship demo` on a fresh embedded store, as the README runs it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psutil
import pytest

from tests.support import cli

pytestmark = pytest.mark.slow

#: secrets the demo runs with: none may appear in a file it writes or on a command line
SECRETS = {
    "MODELSHIP_GATEWAY_TOKEN": "gw-7Qm2-known-admin-token",
    "MODELSHIP_WEBHOOK_SECRET": "wh-9Xc4-known-webhook-secret",
    "MODELSHIP_NOTIFY_SECRET": "nt-3Lp8-known-notify-secret",
    "AWS_SECRET_ACCESS_KEY": "aws-5Rz1-known-secret-key",
    "MODELSHIP_REGISTRY_PASSWORD": "reg-2Vb6-known-password",
}


class CommandLines:
    """Every process' command line, sampled while the demo runs (what `ps` would show)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.done.wait(0.5):
            for proc in psutil.process_iter(["cmdline"]):
                self.seen.add(" ".join(proc.info["cmdline"] or []))

    def __enter__(self) -> CommandLines:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def _files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() and secret in p.read_bytes()]  # fmt: skip


def test_demo_deploys_three_versions_and_rejects_the_degraded_one(tmp_path: Path) -> None:
    env = SECRETS | {"AWS_ACCESS_KEY_ID": "aws-known-key-id", "MODELSHIP_REGISTRY_USERNAME": "u"}
    with CommandLines() as lines:
        proc = cli(tmp_path, "demo", "--json", timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the secrets stay secret: not on a command line, in the output, a log, a report, a
    # Bento, the MLflow store or its artifacts (everything the demo wrote is under its home)
    for name, secret in SECRETS.items():
        assert not [c for c in lines.seen if secret in c], f"{name} on a command line"
        assert secret not in proc.stdout + proc.stderr, f"{name} in the demo's output"
        assert not _files_holding(tmp_path, secret.encode()), f"{name} written to a file"
    assert len(lines.seen) > 10  # the sampler saw the demo's processes
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
    # every share of traffic v2's canary was given is in the audit trail, with the step
    audit = cli(tmp_path, "audit", "breast-cancer", "--json")
    entries = [json.loads(line) for line in audit.stdout.splitlines()]
    weights = [(e["detail"]["step"], e["detail"]["weight"]) for e in entries
               if e["action"] == "canary weight" and e["version"] == "2"]  # fmt: skip
    assert weights == [(1, 25), (2, 100)], entries
    # a second run starts over instead of piling up versions
    again = cli(tmp_path, "demo", "--json", timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [s["version"] for s in json.loads(again.stdout)] == ["1", "2", "3"]
