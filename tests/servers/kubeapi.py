"""A stand-in for the Kubernetes API server's custom-object endpoints, over real HTTP.

No Kubernetes runs on these machines. This answers the requests the official ``kubernetes``
client sends for namespaced custom objects, as the API reference documents them: ``GET``,
``POST`` (201, or 409 ``AlreadyExists``), ``PATCH`` with ``application/merge-patch+json``
(RFC 7386: a null deletes a key; a ``metadata.resourceVersion`` in it is a precondition, 409
``Conflict`` when stale) and ``DELETE``, with ``Status`` bodies on errors and a
``resourceVersion`` that grows on every write. Objects are checked against the real CRD
schemas (``tests/crds.py``) and refused with 422 as the API server would. Nothing else of Kubernetes is here: no
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
_SECRET = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets/([^/?]+)")
_CRD = re.compile(r"^/apis/apiextensions\.k8s\.io/v1/customresourcedefinitions/([^/?]+)")
#: the Secrets that exist, by (namespace, name): the policy's defaults, in both namespaces
SECRETS = frozenset((ns, name) for ns in ("default", "models")
                    for name in ("modelship-settings", "modelship-rclone"))  # fmt: skip

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


#: the custom resources the stand-in serves, as ``plural.group`` (the CRDs installed)
ALL_CRDS = frozenset({"models.mlops.seldon.io", "pipelines.mlops.seldon.io",
                      "experiments.mlops.seldon.io", "inferenceservices.serving.kserve.io"})  # fmt: skip


class KubeApi:
    """The objects by (group, version, namespace, plural, name), and a log of the writes.

    Like the API server it refuses: a kind whose CRD is not installed (404, "the server could
    not find the requested resource"), a namespace that does not exist (404), an object its
    CRD's schema refuses (422 Invalid, unknown fields included, as ``--validate=strict``), and
    a patch whose ``metadata.resourceVersion`` is not the stored one (409 Conflict).
    ``concurrent_writes`` makes that many other writers change an object just before the next
    patches land, as a busy cluster would.
    """

    def __init__(
        self, crds: frozenset[str] = ALL_CRDS, namespaces: frozenset[str] = frozenset(
            {"default", "models"}), validate: bool = True,
    ) -> None:  # fmt: skip
        self.objects: dict[Key, dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.version = 0
        self.lock = threading.Lock()
        self.crds, self.namespaces, self.validate = crds, namespaces, validate
        #: the Secrets that exist (their data is never served here)
        self.secrets: set[tuple[str, str]] = set(SECRETS)
        self.concurrent_writes = 0
        self.conflicts = 0
        #: whether the caller may read CRDs (cluster-scoped: a namespaced Role cannot grant it)
        self.crds_readable = True
        #: the CRDs read, by name
        self.crd_reads: list[str] = []

    def crd(self, name: str) -> dict[str, Any] | None:
        """The installed CRD ``plural.group``, as its project publishes it; where the schemas
        folder is absent, one that serves the version modelship asks for with a schema that
        takes any object (nothing to check against)."""
        from tests.crds import CRD_FILES, crd, schemas_dir

        if name not in self.crds:
            return None
        group = name.split(".", 1)[1]
        if not schemas_dir().is_dir():
            [version] = {k.split("/")[1] for k in CRD_FILES if k.startswith(f"{group}/")}
            anything = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            return {"kind": "CustomResourceDefinition", "metadata": {"name": name},
                    "spec": {"group": group, "versions": [{
                        "name": version, "served": True, "storage": True,
                        "schema": {"openAPIV3Schema": anything}}]}}  # fmt: skip
        for key in CRD_FILES:
            group_version, kind = key.rsplit("/", 1)
            found = crd(group_version, kind)
            if f"{found['spec']['names']['plural']}.{found['spec']['group']}" == name:
                return found
        return None

    def invalid(self, obj: dict[str, Any]) -> list[str]:
        from tests.crds import schema_errors, schemas_dir

        if not self.validate or not schemas_dir().is_dir():  # no schemas here: nothing to check
            return []
        return schema_errors(obj)

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
            if f"{plural}.{group}" not in api.crds:
                self._status(404, "NotFound", "the server could not find the requested resource")
                return None
            if namespace not in api.namespaces:
                self._status(404, "NotFound", f'namespaces "{namespace}" not found')
                return None
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
            definition = _CRD.match(self.path)
            if definition:
                name = definition.group(1)
                api.crd_reads.append(name)
                found = api.crd(name) if api.crds_readable else None
                if not api.crds_readable:
                    self._status(403, "Forbidden", "customresourcedefinitions.apiextensions.k8s.io"
                                 f' "{name}" is forbidden: cannot get at the cluster scope')  # fmt: skip
                elif found is None:
                    self._status(404, "NotFound",
                                 f'customresourcedefinitions.apiextensions.k8s.io "{name}" not found')  # fmt: skip
                else:
                    self._send(200, found)
                return
            secret = _SECRET.match(self.path)
            if secret:
                namespace, name = secret.groups()
                if (namespace, name) not in api.secrets:
                    self._status(404, "NotFound", f'secrets "{name}" not found')
                else:
                    self._send(200, {"kind": "Secret", "apiVersion": "v1",
                                     "metadata": {"name": name, "namespace": namespace}})  # fmt: skip
                return
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
                errors = api.invalid(body)
                if errors:
                    self._status(422, "Invalid", f'{body.get("kind")} "{name}" is invalid: '
                                 + "; ".join(errors))  # fmt: skip
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
                if api.concurrent_writes > 0:  # another writer got there first
                    api.concurrent_writes -= 1
                    api.objects[key] = self._stamp(api.objects[key])
                wanted = (patch.get("metadata") or {}).get("resourceVersion")
                current = api.objects[key]["metadata"]["resourceVersion"]
                if wanted is not None and wanted != current:
                    api.conflicts += 1
                    self._status(409, "Conflict", f'Operation cannot be fulfilled on {where[3]}.'
                                 f'{where[0]} "{name}": the object has been modified; please '
                                 "apply your changes to the latest version and try again")  # fmt: skip
                    return
                merged = merge_patch(api.objects[key], patch)
                errors = api.invalid(merged)
                if errors:
                    self._status(422, "Invalid", f'{merged.get("kind")} "{name}" is invalid: '
                                 + "; ".join(errors))  # fmt: skip
                    return
                api.objects[key] = self._stamp(merged)
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
def kube_api(api: KubeApi | None = None) -> Iterator[tuple[str, KubeApi]]:
    """The stand-in on a free loopback port: its URL and its objects."""
    api = api or KubeApi()
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
