"""The local target: modelship's gateway (``python -m modelship.gateway``) as router and metric source."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from modelship.core.errors import StageError
from modelship.core.traffic import Weights


class RouterError(StageError):
    """The router could not be reached or refused a change."""


class GatewayRouter:
    """:class:`~components.rollout.router.TrafficRouter` over the gateway's admin API."""

    def __init__(self, url: str, token: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s

    def __repr__(self) -> str:  # never show the token
        return f"GatewayRouter({self.url!r})"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("authorization", f"Bearer {self._token}")
        request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            raise RouterError(
                f"the gateway refused {method} {path}: {e.code} {detail}",
                hint=f"check the gateway at {self.url} (its log is beside the deployment's)",
            ) from e
        except OSError as e:
            raise RouterError(
                f"could not reach the gateway at {self.url} for {method} {path}: {e}",
                hint="is the gateway running? `modelship rollout status MODEL` shows its URL",
            ) from e

    def describe(self) -> dict[str, Any]:
        """Weights and backends (url, version, healthy) as the gateway sees them."""
        state: dict[str, Any] = self._call("GET", "/admin/weights")
        return state

    def get_weights(self) -> Weights:
        state = self._call("GET", "/admin/weights")
        return Weights(int(state["challenger"]), float(state["mirror"]))

    def set_weights(self, weights: Weights) -> None:
        self._call("PUT", "/admin/weights", {"challenger": weights.challenger,
                                             "mirror": weights.mirror})  # fmt: skip

    def promote(self) -> None:
        state = self._call("GET", "/admin/weights")
        if "challenger" not in state["backends"]:
            return  # promoted already (a controller restarted after doing it)
        self._call("POST", "/admin/promote", {})

    # -- the metric source -------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/stats")
        return result

    def challenger_healthy(self) -> bool:
        backend = self._call("GET", "/admin/weights")["backends"].get("challenger")
        return backend is None or bool(backend["healthy"])
