"""A stand-in for the Kubernetes API server's custom-object endpoints, over real HTTP.

No Kubernetes runs on these machines. This answers the requests the official ``kubernetes``
client sends for namespaced custom objects, as the API reference documents them: ``GET``,
``POST`` (201, or 409 ``AlreadyExists``), ``PATCH`` with ``application/merge-patch+json``
(RFC 7386: a null deletes a key) and ``DELETE``, with ``Status`` bodies on errors and a
``resourceVersion`` that grows on every write. Nothing else of Kubernetes is here: no
controllers act on the objects, nothing serves them. Used by the rehearsal through a kubeconfig
in each pod's home.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_PATH = re.compile(r"^/apis/([^/]+)/([^/]+)/namespaces/([^/]+)/([^/?]+)(?:/([^/?]+))?")

Key = tuple[str, str, str, str, str]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class KubeApi:
    """The objects by (group, version, namespace, plural, name), and a log of the writes."""

    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.version = 0
        self.lock = threading.Lock()

    def find(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects.values() if o.get("kind") == kind]


def _handler(api: KubeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str, message: str) -> None:
            self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "message": message, "reason": reason, "code": code})  # fmt: skip

        def _key(self) -> tuple[tuple[str, str, str, str], str | None] | None:
            found = _PATH.match(self.path)
            if not found:
                self._status(404, "NotFound", f"no route {self.path}")
                return None
            group, version, namespace, plural, name = found.groups()
            return (group, version, namespace, plural), name

        def _body(self) -> Any:
            return json.loads(
                self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}"
            )

        def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
            api.version += 1
            obj.setdefault("metadata", {})["resourceVersion"] = str(api.version)
            return obj

        def do_GET(self) -> None:
            parsed = self._key()
            if parsed is None:
                return
            where, name = parsed
            with api.lock:
                obj = api.objects.get((*where, name or ""))
            if obj is None:
                self._status(404, "NotFound", f'{where[3]}.{where[0]} "{name}" not found')
            else:
                self._send(200, obj)

        def do_POST(self) -> None:
            parsed = self._key()
            if parsed is None:
                return
            where, _ = parsed
            body = self._body()
            name = body.get("metadata", {}).get("name", "")
            with api.lock:
                if (*where, name) in api.objects:
                    self._status(
                        409, "AlreadyExists", f'{where[3]}.{where[0]} "{name}" already exists'
                    )
                    return
                api.objects[(*where, name)] = self._stamp(body)
                api.writes.append(("create", body.get("kind", ""), name))
                self._send(201, body)

        def do_PATCH(self) -> None:
            parsed = self._key()
            if parsed is None:
                return
            where, name = parsed
            if "merge-patch" not in (self.headers.get("Content-Type") or ""):
                self._status(415, "UnsupportedMediaType", "only merge patches are implemented here")
                return
            patch = self._body()
            with api.lock:
                key = (*where, name or "")
                if key not in api.objects:
                    self._status(404, "NotFound", f'{where[3]}.{where[0]} "{name}" not found')
                    return
                api.objects[key] = self._stamp(merge_patch(api.objects[key], patch))
                api.writes.append(("patch", api.objects[key].get("kind", ""), name or ""))
                self._send(200, api.objects[key])

        def do_DELETE(self) -> None:
            parsed = self._key()
            if parsed is None:
                return
            where, name = parsed
            with api.lock:
                gone = api.objects.pop((*where, name or ""), None)
            if gone is None:
                self._status(404, "NotFound", f'{where[3]}.{where[0]} "{name}" not found')
            else:
                self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

    return Handler


@contextlib.contextmanager
def kube_api() -> Iterator[tuple[str, KubeApi]]:
    """The stand-in on a free loopback port: its URL and its objects."""
    api = KubeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", api
    finally:
        server.shutdown()
        server.server_close()


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    """A kubeconfig whose current context talks to ``url`` (no credentials: the stand-in
    checks none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "rehearsal",
        "clusters": [{"name": "rehearsal", "cluster": {"server": url}}],
        "users": [{"name": "rehearsal", "user": {"token": "rehearsal"}}],
        "contexts": [{"name": "rehearsal",
                      "context": {"cluster": "rehearsal", "user": "rehearsal", "namespace": namespace}}],
    }  # fmt: skip
    path.write_text(json.dumps(config))
    return path
