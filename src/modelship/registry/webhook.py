"""The receiver for MLflow registry webhooks (``model_version.created``,
``model_version_alias.created``), as MLflow 3.17 sends them.

MLflow signs ``f"{delivery_id}.{timestamp}.{body}"`` with HMAC-SHA256 under the webhook's
secret and sends ``X-MLflow-Signature: v1,<base64>``, ``X-MLflow-Timestamp`` (Unix seconds) and
``X-MLflow-Delivery-Id``. :func:`check` is pure: headers, body, secret and clock in, a
:class:`Delivery` or a :class:`Refused` with the HTTP status out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from modelship.core.errors import InputError
from modelship.core.files import write_atomic
from modelship.core.identifiers import check_alias, check_model_name, check_version

SIGNATURE = "x-mlflow-signature"
TIMESTAMP = "x-mlflow-timestamp"
DELIVERY = "x-mlflow-delivery-id"

#: MLflow's events that start a deployment
CREATED = "model_version.created"
ALIAS_CREATED = "model_version_alias.created"
#: alias moves that deploy; champion/previous are moved by modelship itself
DEPLOY_ALIASES = ("challenger",)


class Refused(Exception):
    """A delivery that is turned away, with the HTTP status that says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    event: str
    model: str
    version: str
    alias: str | None = None


_DELIVERY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    content = f"{delivery_id}.{timestamp}.".encode("utf-8", "surrogatepass") + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def check(
    headers: Mapping[str, str],
    body: bytes,
    *,
    secret: str,
    now: float,
    max_age_s: float = 300.0,
    max_bytes: int = 65536,
) -> Delivery:
    """The delivery in ``body`` once it is proven to come from MLflow, recently; else Refused."""
    if len(body) > max_bytes:
        raise Refused(413, f"body of {len(body)} bytes is over the limit of {max_bytes}")
    lower = {k.lower(): v for k, v in headers.items()}
    signature, timestamp, delivery_id = (
        lower.get(SIGNATURE),
        lower.get(TIMESTAMP),
        lower.get(DELIVERY),
    )
    if not signature or not timestamp or not delivery_id:
        missing = [
            h
            for h, v in ((SIGNATURE, signature), (TIMESTAMP, timestamp), (DELIVERY, delivery_id))
            if not v
        ]
        raise Refused(
            401, f"missing {', '.join(missing)}: configure the MLflow webhook with a secret"
        )
    # as bytes: compare_digest refuses str with non-ASCII characters (TypeError), which any
    # sender can put in a header
    expected = sign(secret, delivery_id, timestamp, body).encode()
    if not hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass")):
        raise Refused(401, "signature does not match: wrong secret, or the body was altered")
    if not _DELIVERY_ID.fullmatch(delivery_id):
        # it names a log file and goes into the audit trail: only what MLflow sends (a UUID)
        raise Refused(400, "the delivery id is not letters, digits, '.', '_' or '-' (128 at most)")
    try:
        sent = float(timestamp)
    except ValueError:
        raise Refused(401, "timestamp is not a number of seconds") from None
    if not math.isfinite(sent):  # NaN compares false with everything: it would pass the age check
        raise Refused(401, "timestamp is not a finite number of seconds")
    if abs(now - sent) > max_age_s:
        raise Refused(
            401,
            f"timestamp is {now - sent:.0f} s old (limit {max_age_s:.0f} s): refused as a replay",
        )
    try:
        envelope = json.loads(body)
        event = f"{envelope['entity']}.{envelope['action']}"
        data = envelope["data"]
        model, version = str(data["name"]), str(data["version"])
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise Refused(400, f"malformed delivery: {type(e).__name__}: {e}") from None
    if event not in (CREATED, ALIAS_CREATED):
        raise Refused(
            422, f"event {event} is not one modelship acts on ({CREATED}, {ALIAS_CREATED})"
        )
    alias = str(data.get("alias")) if event == ALIAS_CREATED else None
    try:  # they become a process's arguments: MLflow's rules, checked before anything runs
        check_model_name(model)
        check_version(version)
        if alias is not None:
            check_alias(alias)
    except InputError as e:
        raise Refused(400, e.message) from None
    return Delivery(delivery_id, event, model, version, alias)


def should_deploy(delivery: Delivery) -> bool:
    return delivery.event == CREATED or delivery.alias in DEPLOY_ALIASES


class SeenDeliveries:
    """Delivery ids already handled, kept in a file so a restart does not act on them twice.

    Bounded: an entry expires once its delivery's timestamp could no longer pass :func:`check`
    (``window_s``, the replay limit, twice over for clock skew either way), and at most ``keep``
    are held whatever the rate. Each line is ``ID UNIX_TIME``; the file is rewritten (atomically)
    when expired entries are dropped."""

    def __init__(self, path: Path, *, window_s: float = 300.0, keep: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.path, self.window_s, self.keep, self.clock = path, window_s, keep, clock
        self.seen: dict[str, float] = {}
        now = clock()
        if path.exists():
            for line in path.read_text().splitlines():
                delivery_id, _, at = line.partition(" ")
                if delivery_id:  # a line with no time (an older file): kept for one window
                    self.seen[delivery_id] = float(at) if _is_number(at) else now
        self._expire(now, rewrite=True)

    def __contains__(self, delivery_id: str) -> bool:
        return delivery_id in self.seen

    def __len__(self) -> int:
        return len(self.seen)

    def add(self, delivery_id: str) -> None:
        now = self.clock()
        self.seen[delivery_id] = now
        if self._expire(now, rewrite=False):
            self._write()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(f"{delivery_id} {now:.3f}\n")

    def _expire(self, now: float, *, rewrite: bool) -> bool:
        """Drop what can no longer be replayed, and the oldest past ``keep``; whether any went."""
        horizon = now - 2 * self.window_s
        kept = {k: t for k, t in self.seen.items() if t >= horizon}
        if len(kept) > self.keep:
            kept = dict(sorted(kept.items(), key=lambda kv: kv[1])[-self.keep :])
        dropped = len(kept) != len(self.seen)
        self.seen = kept
        if dropped and rewrite:
            self._write()
        return dropped

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, "".join(f"{k} {t:.3f}\n" for k, t in self.seen.items()))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
