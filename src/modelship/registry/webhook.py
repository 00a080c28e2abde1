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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modelship.core.errors import InputError
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
    """Delivery ids already handled, kept in a file so a restart does not act on them twice."""

    def __init__(self, path: Path, keep: int = 10000) -> None:
        self.path = path
        self.keep = keep
        self.ids: list[str] = path.read_text().split() if path.exists() else []
        self._set = set(self.ids)

    def __contains__(self, delivery_id: str) -> bool:
        return delivery_id in self._set

    def add(self, delivery_id: str) -> None:
        self.ids.append(delivery_id)
        self._set.add(delivery_id)
        if len(self.ids) > self.keep:
            self.ids = self.ids[-self.keep :]
            self._set = set(self.ids)
            self.path.write_text("\n".join(self.ids) + "\n")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(delivery_id + "\n")
