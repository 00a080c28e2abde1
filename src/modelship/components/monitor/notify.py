"""Notices to a person's webhook: JSON, signed so the receiver knows it came from modelship.

``x-modelship-signature: sha256=HEX`` is HMAC-SHA256 over ``TIMESTAMP.BODY`` with the secret in
``MODELSHIP_NOTIFY_SECRET``, and ``x-modelship-timestamp`` carries the timestamp, so a receiver
can refuse replays. A notice that cannot be delivered is logged and returned as an error
string; it never stops a rollback.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from typing import Any

SECRET_ENV = "MODELSHIP_NOTIFY_SECRET"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def send(url: str | None, secret: str, notice: dict[str, Any], timeout_s: float = 5.0) -> str:
    """Deliver ``notice``; "" when delivered (or no URL), else why not."""
    if not url:
        return ""
    body = json.dumps(notice, default=str).encode()
    stamp = str(int(time.time()))
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("content-type", "application/json")
    request.add_header("x-modelship-timestamp", stamp)
    if secret:
        request.add_header("x-modelship-signature", signature(secret, stamp, body))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return ""
    except (urllib.error.URLError, OSError) as e:
        return f"could not notify {url}: {e}"
