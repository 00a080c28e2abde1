"""The audit trail: every change to what serves a model, in MLflow beside it, hash-chained.

Each entry (an alias moved, a canary started, its weights changed, a promotion, an abort, a
rollback, the policy a deployment ran under) is a JSON document that holds the hash of the
entry before it, so no entry can be edited, removed or slipped in without the chain breaking.
Entries are artifacts ``audit/NNNNNNNN-HASH.json`` of the model's state run (experiment
``modelship-state``, kind ``audit``), written once and never rewritten; the hash of the latest
entry is also a tag of the registered model (``modelship.audit_head``), so an edit that
rewrites the chain from the edited entry on still disagrees with that tag. Two writers that
append at the same moment leave two entries with one number: :func:`verify` reports that as a
fork, not as tampering.

Who asked is the actor: ``MODELSHIP_ACTOR`` where the caller sets it (the webhook server: its
delivery id; the monitor: its window), else the user and host of a CLI, or the host and
process id elsewhere (a pod's host name is the pod's).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from modelship.core.settings import Settings
from modelship.registry.shared_state import SharedState

KIND = "audit"
FOLDER = "audit"
HEAD_TAG = "modelship.audit_head"
ACTOR_ENV = "MODELSHIP_ACTOR"
GENESIS = "sha256:" + "0" * 64


def actor() -> str:
    """Who or what asks for the change being recorded (see the module's docstring)."""
    if os.environ.get(ACTOR_ENV):
        return os.environ[ACTOR_ENV]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()} (pid {os.getpid()})"


def entry_hash(entry: dict[str, Any]) -> str:
    """sha256 of the entry's canonical JSON, its own ``hash`` left out."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Problem:
    seq: int
    what: str


class AuditTrail:
    """One model's audit trail in MLflow."""

    def __init__(self, client: MlflowClient, settings: Settings, model: str) -> None:
        self.client, self.model = client, model
        self.state = SharedState(client, settings, model, KIND)

    def _names(self) -> list[str]:
        try:
            found = self.client.list_artifacts(self.state.run_id, FOLDER)
        except MlflowException:
            return []
        return sorted(Path(f.path).name for f in found if f.path.endswith(".json"))

    def _read(self, name: str) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="modelship-audit-") as tmp:
            path = self.client.download_artifacts(self.state.run_id, f"{FOLDER}/{name}", tmp)
            loaded: dict[str, Any] = json.loads(Path(path).read_text())
            return loaded

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first."""
        return [self._read(name) for name in self._names()]

    def append(
        self, action: str, version: str | None = None, by: str | None = None, **detail: Any
    ) -> dict[str, Any]:
        """Record ``action`` (on ``version``, asked by ``by``, else :func:`actor`) with
        ``detail``; the entry as written."""
        names = self._names()
        last = self._read(names[-1]) if names else None
        entry: dict[str, Any] = {
            "seq": (int(last["seq"]) + 1) if last else 1,
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "model": self.model,
            "action": action,
            "version": version,
            "actor": by or actor(),
            "detail": {k: v for k, v in detail.items() if v is not None},
            "prev": last["hash"] if last else GENESIS,
        }
        entry["hash"] = entry_hash(entry)
        name = f"{entry['seq']:08d}-{entry['hash'].removeprefix('sha256:')[:12]}.json"
        self.client.log_text(self.state.run_id, json.dumps(entry, indent=2), f"{FOLDER}/{name}")
        self.client.set_registered_model_tag(self.model, HEAD_TAG, entry["hash"])
        return entry

    def head(self) -> str | None:
        try:
            tags = self.client.get_registered_model(self.model).tags
        except MlflowException:
            return None
        head = tags.get(HEAD_TAG)
        return str(head) if head else None


def verify(entries: list[dict[str, Any]], head: str | None) -> list[Problem]:
    """What is wrong with the chain: an altered entry, a broken or forked link, a gap, or a
    latest entry that is not the one the model's tag names. Empty: intact."""
    problems: list[Problem] = []
    previous: dict[str, Any] | None = None
    seen: dict[int, str] = {}
    for entry in entries:
        seq = int(entry.get("seq", 0))
        if entry_hash(entry) != entry.get("hash"):
            problems.append(Problem(seq, "altered: its content does not match its hash"))
        if seq in seen:
            problems.append(Problem(seq, "forked: two entries carry this number (two writers "
                                         "at once, or one slipped in)"))  # fmt: skip
        seen[seq] = str(entry.get("hash"))
        if previous is not None and seq == int(previous["seq"]) + 1:
            if entry.get("prev") != previous.get("hash"):
                problems.append(Problem(seq, f"does not follow entry {previous['seq']}"))
        elif previous is not None and seq > int(previous["seq"]) + 1:
            problems.append(Problem(seq, f"entries {int(previous['seq']) + 1}..{seq - 1} are "
                                         "missing"))  # fmt: skip
        elif previous is None and (seq != 1 or entry.get("prev") != GENESIS):
            problems.append(Problem(seq, "the first entry left is not the chain's first"))
        previous = entry
    if entries and head is not None and entries[-1].get("hash") != head:
        problems.append(Problem(int(entries[-1]["seq"]), f"is not the latest the model's tag "
                                f"{HEAD_TAG} names ({head[:19]}...): entries were removed or "
                                "rewritten"))  # fmt: skip
    if not entries and head is not None:
        problems.append(Problem(0, f"no entries, but {HEAD_TAG} names {head[:19]}..."))
    return problems


def record(
    client: MlflowClient, model: str, action: str, version: str | None = None,
    by: str | None = None, **detail: Any,
) -> None:  # fmt: skip
    """Append to ``model``'s trail; a trail that cannot be written never stops the change it
    records (the change already happened): that is said on stderr."""
    import sys

    try:
        AuditTrail(client, Settings.from_env(), model).append(action, version, by, **detail)
    except Exception as e:  # MLflow and network errors alike
        print(f"modelship: could not record {action} of {model} in the audit trail: {e}",
              file=sys.stderr)  # fmt: skip
