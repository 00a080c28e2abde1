"""Hostile input against real processes: every request gets an answer, and never a 5xx.

A Bento built straight from a small ONNX model (tests/support.py ``quick_bento``) is served by
a real ``bentoml serve`` twice, on the fast path and on BentoML's own path (bentos/fastpath.py),
with the traffic gateway in front of the fast one and the MLflow webhook receiver beside them.
Each is sent a corpus of raw HTTP requests (bodies too large, nested too deep, not UTF-8, cut
off, chunked with no end...) over plain sockets, each with a deadline, and is fuzzed with
schemathesis from its OpenAPI document: the Bento's own /docs.json, and the hand-written
documents of the gateway and the receiver in docs/openapi/ (checked here against their routes).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from modelship.bentos.config import ServingConfig
from modelship.bentos.openapi import document
from modelship.core.ports import free_port
from modelship.gateway.app import Backend, GatewayConfig, create_app
from modelship.registry.webhook import SeenDeliveries, sign
from modelship.registry.webhook_server import create_app as webhook_app
from tests.conftest import FUZZ_EXAMPLES
from tests.support import TOKEN, background, bento_env, http_stub, quick_bento, wait_http

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_DOC = yaml.safe_load((ROOT / "docs" / "openapi" / "gateway.yaml").read_text())
WEBHOOK_DOC = yaml.safe_load((ROOT / "docs" / "openapi" / "webhook.yaml").read_text())
#: how long the servers here let a request body stall (408 after it); the default is 30 s
BODY_TIMEOUT_S = 2.0
#: every answer, the stalled body's 408 included, arrives within this
DEADLINE_S = BODY_TIMEOUT_S + 8.0
#: examples per fuzzed operation and generation mode: a quarter of the property tests' count
#: (each is an HTTP request against a real process)
API_EXAMPLES = max(5, FUZZ_EXAMPLES // 4)


# -- the documents tell the truth (no process needed) ------------------------------------------


def _doc_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, item in doc["paths"].items() for m in item}


def test_the_gateway_document_lists_exactly_its_own_routes() -> None:
    app = create_app(GatewayConfig("t", Backend("http://127.0.0.1:1")))
    routes = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD" and r.resource.canonical != "/{tail}"
    }
    assert _doc_routes(GATEWAY_DOC) == routes


def test_the_webhook_document_lists_exactly_its_routes(tmp_path: Path) -> None:
    app = webhook_app("s", SeenDeliveries(tmp_path / "seen"), dispatcher=None)  # type: ignore[arg-type]
    routes = {(m, r.path) for r in app.routes if isinstance(r, Route) for m in r.methods or ()}
    assert _doc_routes(WEBHOOK_DOC) == {(m, p) for m, p in routes if m != "HEAD"}


def test_the_bento_document_holds_the_models_columns_and_limits() -> None:
    config = ServingConfig(
        model_name="m", model_version="3", model_digest="sha256:x", variant="fp32",
        task="classification", classes=[0, 1], columns=["mean radius", "b"], files={},
        max_rows_per_request=7,
    )  # fmt: skip
    doc = document(config)
    records, columnar, rows = doc["components"]["schemas"]["PredictRequest"]["properties"][
        "inputs"
    ]["oneOf"]
    assert records["items"]["required"] == ["mean radius", "b"] and records["maxItems"] == 7
    assert not records["items"]["additionalProperties"]
    assert set(columnar["properties"]) == {"mean radius", "b"}
    assert rows["items"]["minItems"] == rows["items"]["maxItems"] == 2
    assert records["items"]["properties"]["b"]["maximum"] == 3.4028234663852886e38
    assert doc["components"]["schemas"]["Prediction"]["properties"]["prediction"] == {
        "enum": [0, 1]
    }
    assert set(doc["paths"]["/predict"]["post"]["responses"]) == {
        "200", "400", "405", "408", "413", "503"
    }  # fmt: skip


# -- the live processes ------------------------------------------------------------------------


WEBHOOK_SECRET = "fuzz-secret"


class _GitHubApi(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()


@dataclass
class Server:
    name: str
    url: str
    log: Path
    ready: str  # the path that answers 200 once it serves

    def log_from(self, offset: int) -> str:
        return self.log.read_bytes()[offset:].decode(errors="replace")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """The fast-path Bento, the BentoML-path Bento, the gateway and the webhook receiver."""
    root = tmp_path_factory.mktemp("hostile")
    homes = {"fast": root / "fast-home", "bentoml": root / "bentoml-home"}
    tags = {
        name: quick_bento(home, root / f"{name}-work", server=name, body_timeout_s=BODY_TIMEOUT_S)
        for name, home in homes.items()
    }
    ports = {name: free_port() for name in ("fast", "bentoml", "gateway", "webhook")}
    stack_github = contextlib.ExitStack()
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    bentoml = str(Path(sys.executable).parent / "bentoml")
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        name: ([bentoml, "serve", tags[name], "--port", str(ports[name]), "--host", "127.0.0.1"],
               bento_env(homes[name]))
        for name in homes
    }  # fmt: skip
    commands["gateway"] = (
        [sys.executable, "-m", "modelship.gateway", "--port", str(ports["gateway"]),
         "--champion", f"{url['fast']}@v1", "--health-interval", "0.5",
         "--body-timeout", str(BODY_TIMEOUT_S)],
        os.environ | {"MODELSHIP_GATEWAY_TOKEN": TOKEN},
    )  # fmt: skip
    # deliveries that pass every check go to a stand-in GitHub API: a local deployment per
    # fuzzed delivery would start dozens of processes
    github = stack_github.enter_context(http_stub(_GitHubApi))
    commands["webhook"] = (
        [sys.executable, "-m", "modelship.cli", "webhook", "serve", "--port", str(ports["webhook"]),
         "--dispatch", "github", "--github-repo", "acme/models"],
        os.environ | {"MODELSHIP_HOME": str(root / "webhook-home"),
                      "MODELSHIP_WEBHOOK_SECRET": WEBHOOK_SECRET, "GITHUB_TOKEN": "t",
                      "GITHUB_API_URL": github},
    )  # fmt: skip
    ready = {"fast": "/readyz", "bentoml": "/readyz", "gateway": "/readyz", "webhook": "/healthz"}
    with stack_github, contextlib.ExitStack() as stack:
        procs = {}
        for name, (cmd, env) in commands.items():  # all start at once; then wait for each
            procs[name] = stack.enter_context(background(cmd, root / f"{name}.log", env))
        for name, proc in procs.items():
            wait_http(url[name] + ready[name], proc, root / f"{name}.log")
        yield {name: Server(name, url[name], root / f"{name}.log", ready[name]) for name in url}
        for proc in procs.values():  # all at once: each may take seconds to drain
            proc.terminate()


def _assert_ready(server: Server) -> None:
    answer = requests.get(server.url + server.ready, timeout=DEADLINE_S)
    assert answer.status_code == 200, (server.name, answer.text)


# -- a corpus of raw requests ------------------------------------------------------------------


def _post(
    body: bytes, content_type: bytes = b"application/json", path: bytes = b"/predict"
) -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip


def _chunked(*chunks: bytes, end: bool = True) -> bytes:
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return head + body + (b"0\r\n\r\n" if end else b"")


ROW = b"[" + b",".join([b"14.5"] * 30) + b"]"
CORPUS: dict[str, bytes] = {
    "valid": _post(b'{"inputs": [' + ROW + b"]}"),
    "empty-body": _post(b""),
    "not-json": _post(b"hello"),
    "invalid-utf8": _post(b'{"inputs": "\xff\xfe\xfa"}'),
    "utf16-json": _post('{"inputs": [[1]]}'.encode("utf-16")),
    "deeply-nested-array": _post(b"[" * 100_000 + b"]" * 100_000),
    "deeply-nested-inputs": _post(b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
    "deeply-nested-object": _post(b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    "nan-literal": _post(b'{"inputs": [[NaN]]}'),
    "infinity-literals": _post(b'{"inputs": [' + ROW[:-5] + b"Infinity]]}"),
    "number-beyond-float": _post(b'{"inputs": [' + ROW[:-5] + b"1e400]]}"),
    "integer-of-5000-digits": _post(b'{"inputs": [[' + b"9" * 5000 + b"]]}"),
    "duplicate-keys": _post(b'{"inputs": [' + ROW + b'], "inputs": "x"}'),
    "wrong-content-type": _post(b'{"inputs": [' + ROW + b"]}", b"text/plain"),
    "form-encoded": _post(b"inputs=1", b"application/x-www-form-urlencoded"),
    "booleans-among-numbers": _post(b'{"inputs": [' + ROW[:-5] + b"true]]}"),
    "null-row": _post(b'{"inputs": [null]}'),
    "mixed-shapes": _post(b'{"inputs": [' + ROW + b', {"a": 1}]}'),
    "declared-over-the-limit": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
    "chunked-over-the-limit": _chunked(*([b"1" * 1_000_000] * 3)),
    "chunked-with-no-end": _chunked(b'{"inputs": ', end=False),
    "declared-longer-than-sent": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{}",
    "bad-content-length": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "get-predict": b"GET /predict HTTP/1.1\r\nHost: x\r\n\r\n",
    "unknown-method": b"BREW /predict HTTP/1.1\r\nHost: x\r\n\r\n",
    "not-http": b"\x00\x01\x02 garbage\r\n\r\n",
    "header-of-64k": b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n",
}  # fmt: skip


def _status(request: bytes, url: str, deadline_s: float) -> int:
    """The status of the answer to ``request``; fails past the deadline or with no answer."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=deadline_s) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n" not in received:
            left = deadline_s - (time.monotonic() - started)
            assert left > 0, f"no answer within {deadline_s} s"
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no answer within {deadline_s} s") from None
            assert chunk, f"connection closed with no answer (got {received!r})"
            received += chunk
    status_line = received.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1."), status_line
    return int(status_line.split()[1])


@pytest.mark.slow
@pytest.mark.parametrize("target", ["fast", "bentoml", "gateway"])
@pytest.mark.parametrize("case", list(CORPUS))
def test_every_raw_request_gets_an_answer_below_500(
    servers: dict[str, Server], target: str, case: str
) -> None:
    server = servers[target]
    offset = server.log.stat().st_size
    status = _status(CORPUS[case], server.url, DEADLINE_S)
    assert status < 500, (target, case, status)
    if case == "valid":
        assert status == 200
    # the server logged before it answered: a refusal is at most a line, never a traceback
    said = server.log_from(offset)
    assert "Traceback" not in said, (target, case, said[-3000:])


@pytest.mark.slow
@pytest.mark.parametrize("target", ["fast", "bentoml", "gateway"])
def test_a_client_that_leaves_mid_body_is_one_log_line(
    servers: dict[str, Server], target: str
) -> None:
    server = servers[target]
    offset = server.log.stat().st_size
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"inputs\": [[1")  # fmt: skip
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while "went away" not in server.log_from(offset) and time.monotonic() < deadline:
        time.sleep(0.1)
    said = server.log_from(offset)
    assert "Traceback" not in said, said
    assert [line for line in said.splitlines() if line.strip()] == [
        line for line in said.splitlines() if "went away before sending the whole body" in line
    ] and said.count("went away") == 1, said
    _assert_ready(server)


# -- schemathesis -------------------------------------------------------------------------------

Checks = list[Callable[..., Any]]
CONFORMANCE: Checks = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _signed_delivery(case: Any, base_url: str) -> requests.Response:
    """The case's body sent as MLflow sends a delivery: signed with the secret, just now."""
    body = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    delivery_id, timestamp = uuid.uuid4().hex, str(int(time.time()))
    headers = {
        "content-type": "application/json",
        "x-mlflow-delivery-id": delivery_id,
        "x-mlflow-timestamp": timestamp,
        "x-mlflow-signature": sign(WEBHOOK_SECRET, delivery_id, timestamp, body),
    }
    url = base_url + case.formatted_path
    return requests.post(url, data=body, headers=headers, timeout=DEADLINE_S)


def _fuzz(
    doc: dict[str, Any],
    base_url: str,
    headers: dict[str, str] | None = None,
    send: Callable[[Any, str], requests.Response] | None = None,
) -> Counter[tuple[str, int]]:
    """Every operation of ``doc``, with data that fits it and data that does not: each answer
    arrives within the deadline, is not a 5xx, and is one the document declares. How many
    answers each operation gave with each status. ``send`` sends a body-carrying case its own
    way (signed, say) instead of schemathesis' call."""
    seen: Counter[tuple[str, int]] = Counter()
    schema = schemathesis.openapi.from_dict(doc)
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        modes = [GenerationMode.POSITIVE]
        if operation.body or any(True for _ in operation.iter_parameters()):
            modes.append(GenerationMode.NEGATIVE)  # nothing to break in a bare GET
        for mode in modes:
            _fuzz_operation(operation, mode, seen, base_url, headers, send)
    return seen


def _fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    seen: Counter[tuple[str, int]],
    base_url: str,
    headers: dict[str, str] | None,
    send: Callable[[Any, str], requests.Response] | None,
) -> None:
    @settings(max_examples=API_EXAMPLES, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case: Any) -> None:
        if send is not None and operation.body:
            response = send(case, base_url)
        else:
            response = case.call(base_url=base_url, headers=headers, timeout=DEADLINE_S)
        seen[operation.label, response.status_code] += 1
        case.validate_response(response, checks=CONFORMANCE)

    call()


def _statuses(seen: Counter[tuple[str, int]], label: str) -> set[int]:
    return {status for (op, status) in seen if op == label}


def _restore_gateway(gateway: Server, fast: Server) -> None:
    """The admin API was fuzzed with the token: put the champion back, as an operator would."""
    answer = requests.put(
        gateway.url + "/admin/backends",
        json={"champion": {"url": fast.url, "version": "1"}, "challenger": None},
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=DEADLINE_S,
    )
    assert answer.status_code == 200, answer.text
    requests.put(gateway.url + "/admin/weights", json={"challenger": 0, "mirror": 0.0},
                 headers={"authorization": f"Bearer {TOKEN}"}, timeout=DEADLINE_S)  # fmt: skip
    deadline = time.monotonic() + 10  # its next health check finds the champion healthy
    while requests.get(gateway.url + "/readyz", timeout=DEADLINE_S).status_code != 200:
        assert time.monotonic() < deadline, "the gateway never saw its champion healthy again"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "target",
    ["fast", "bentoml", "gateway-proxy", "gateway-admin-without-token",
     "gateway-admin-with-token", "webhook-unsigned", "webhook-signed"],
)  # fmt: skip
def test_fuzzed_requests_get_declared_answers_below_500(
    servers: dict[str, Server], target: str
) -> None:
    bento_doc = requests.get(servers["fast"].url + "/docs.json", timeout=DEADLINE_S).json()
    admin = {"authorization": f"Bearer {TOKEN}"}
    if target in ("fast", "bentoml", "gateway-proxy"):
        name = target.removesuffix("-proxy")
        doc = requests.get(servers[name].url + "/docs.json", timeout=DEADLINE_S).json()
        assert doc == bento_doc  # both request paths (and the gateway's backend) say one thing
        seen = _fuzz(bento_doc, servers[name].url)
        # the generator reached the model: predictions and refusals both
        assert {200, 400} <= _statuses(seen, "POST /predict"), seen
    elif target == "gateway-admin-without-token":
        name = "gateway"
        seen = _fuzz(GATEWAY_DOC, servers[name].url)
        admin_ops = [op for op, _ in seen if "/admin/" in op]
        assert admin_ops and all(_statuses(seen, op) == {401} for op in admin_ops), seen
    elif target == "gateway-admin-with-token":
        name = "gateway"
        try:
            seen = _fuzz(GATEWAY_DOC, servers[name].url, admin)
        finally:
            _restore_gateway(servers[name], servers["fast"])
        assert 200 in _statuses(seen, "PUT /admin/weights"), seen
        assert 200 in _statuses(seen, "PUT /admin/backends"), seen
    else:
        name = "webhook"
        signed = target == "webhook-signed"
        seen = _fuzz(WEBHOOK_DOC, servers[name].url, send=_signed_delivery if signed else None)
        expected = 202 if signed else 401  # signed: deliveries reach the dispatcher
        assert expected in _statuses(seen, "POST /webhooks/mlflow"), seen
    _assert_ready(servers[name])


@pytest.mark.slow
def test_the_bentos_docs_json_names_the_models_columns(servers: dict[str, Server]) -> None:
    from sklearn.datasets import load_breast_cancer

    columns = list(load_breast_cancer(as_frame=True).data.columns)
    doc = requests.get(servers["fast"].url + "/docs.json", timeout=DEADLINE_S).json()
    records = doc["components"]["schemas"]["PredictRequest"]["properties"]["inputs"]["oneOf"][0]
    assert records["items"]["required"] == columns
    assert all(p["type"] == "number" for p in records["items"]["properties"].values())
    assert doc["paths"]["/predict"]["post"]["responses"]["400"]["content"]["application/json"]
