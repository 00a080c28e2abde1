"""The Bento service: one model version behind BentoML 1.4, fast and hard to misuse.

``POST /predict`` takes ``{"inputs": records | columns | rows}`` (see :mod:`bentos.payload`)
and answers one ``{"prediction": ..., "probabilities": [...]}`` per row, with the model version,
its digest and the request id in response headers. Requests are batched adaptively
(``package.batching`` in the policy). ``/healthz`` answers while the process lives; ``/readyz``
and ``/predict`` answer 503, with the reason, until the model's files were checked, the model
loaded and a warm-up prediction came back. ``/metrics`` is Prometheus.

Everything the service needs comes from ``serving.json`` beside the ``bentos`` package.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
import prometheus_client as prom
from pydantic import BeforeValidator, Field
from starlette.responses import JSONResponse

from . import config as serving_config
from . import model as serving_model
from . import openapi, tuning
from .fastpath import GreedyBatcher, Shed
from .inference_log import Exchange, InferenceLog
from .payload import BadPayload, to_matrix

log = logging.getLogger("bentoml.modelship")


class _ClientFault(logging.Filter):
    """BentoML logs each request it refuses (pydantic's 400, its own 4xx) at ERROR with the
    traceback, as "Exception on /predict [POST]". The request was at fault, not the server: one
    WARNING line instead, with the status and the error's first line. The gateway has the same
    filter for aiohttp (``modelship.core.clientfaults``): a Bento ships only this folder."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[1] if record.exc_info else None
        status: Any
        if isinstance(exc, ValidationError):
            errors = exc.errors()
            status, said = 400, str(errors[0]["msg"] if errors else exc.title)
        else:
            code = getattr(exc, "error_code", None)  # a BentoMLException's HTTPStatus
            status, said = getattr(code, "value", None), str(exc).strip().split("\n")[0]
        if exc is not None and isinstance(status, int) and 400 <= status < 500:
            args = (record.getMessage(), status, said)
            record.msg, record.args = "%s: answered %d, the request was at fault: %s", args
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("bentoml._internal.server.http_app").addFilter(_ClientFault())

SRC = Path(__file__).resolve().parent.parent
CONFIG = serving_config.load(SRC)
ROUTE = "/predict"
DOCS = "/docs.json"
DOCUMENT = openapi.document(CONFIG)

tuning.cancel_request_timers()

REQUESTS = prom.Counter(
    "modelship_requests_total", "Prediction requests by outcome", ["version", "outcome"]
)
ROWS = prom.Counter("modelship_predicted_rows_total", "Rows predicted", ["version"])
LATENCY = prom.Histogram(
    "modelship_request_seconds",
    "Time from request to response at the service, prediction requests only",
    ["version"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
BATCH_ROWS = prom.Histogram(
    "modelship_batch_rows",
    "Rows per model call (after adaptive batching)",
    ["version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
MODEL_SECONDS = prom.Histogram(
    "modelship_model_seconds",
    "Time inside the model per call",
    ["version"],
    buckets=(0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1),
)


class Readiness:
    """Set once by the loader thread; read on every request."""

    def __init__(self) -> None:
        self.ready = False
        self.reason = "loading the model"
        self.predictor: serving_model.Predictor | None = None


STATE = Readiness()
LOG: InferenceLog | None = None
BATCHER: GreedyBatcher | None = None
#: /predict answered by PredictGuard itself (bentos/fastpath.py); native models, which take
#: milliseconds and must not block the event loop, keep BentoML's path with its worker thread
FAST = CONFIG.server == "fast" and CONFIG.onnx


def _observe(rows: int, seconds: float) -> None:
    version = CONFIG.model_version
    MODEL_SECONDS.labels(version).observe(seconds)
    BATCH_ROWS.labels(version).observe(rows)
    ROWS.labels(version).inc(rows)


def _parse(value: Any) -> np.ndarray:
    try:
        return to_matrix(value, CONFIG.columns, CONFIG.max_rows_per_request)
    except BadPayload:
        raise
    except Exception as e:  # anything odd in a body is the sender's to fix, never a 500
        raise BadPayload(f"inputs could not be read: {e}") from None


Inputs = Annotated[
    Any,
    BeforeValidator(_parse),
    Field(
        description="records (list of objects), columns (object of lists) or rows (list of "
        f"lists), with the columns {CONFIG.columns}"
    ),
]


def _json_error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"allow": "POST"} if status == 405 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class PredictGuard:
    """ASGI middleware around ``/predict``: size limit, readiness, request id, headers, log.

    Runs before BentoML parses the body, so an oversized or early request costs nothing, and
    sees the exact bytes of each request and answer, which it hands to the inference log.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.limit = CONFIG.max_body_bytes
        digest = CONFIG.model_digest.encode()
        self.headers = [
            (b"x-modelship-model", f"{CONFIG.model_name}/{CONFIG.model_version}".encode()),
            (b"x-modelship-digest", digest),
        ]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == DOCS and scope["method"] in ("GET", "HEAD"):
            # the real contract, in place of BentoML's generic one (bentos/openapi.py)
            await JSONResponse(DOCUMENT)(scope, receive, self._with_headers(send, []))
            return
        if scope["path"] != ROUTE:
            await self.app(scope, receive, self._with_headers(send, []))
            return
        started = time.perf_counter()
        version = CONFIG.model_version
        request_id = _request_id(scope)
        extra = [(b"x-request-id", request_id.encode())]
        refusal = self._refuse(scope)
        if refusal is not None:
            REQUESTS.labels(version, refusal[0]).inc()
            response = _json_error(refusal[1], refusal[2])
            await response(scope, receive, self._with_headers(send, extra))
            return
        try:
            body = await _read_body(receive, self.limit, CONFIG.body_timeout_s)
        except ClientGone:
            # one line, and no half-read body reaches the model. The answer reaches no one, but
            # is sent all the same: BentoML's own layers count the request as in flight until
            # a response ends, and a shutdown waited on it for ever
            REQUESTS.labels(version, "client_gone").inc()
            log.info("request %s: the client went away before sending the whole body", request_id)
            response = _json_error(400, "the request body ended early")
            await response(scope, receive, self._with_headers(send, extra))
            return
        except BodyRefused as refused:
            REQUESTS.labels(version, refused.outcome).inc()
            response = _json_error(refused.status, refused.message)
            await response(scope, receive, self._with_headers(send, extra))
            return
        if FAST:
            status, content, rows = await _answer_here(body)
            raw = json.dumps(content).encode()
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(raw)).encode()), *self.headers, *extra]  # fmt: skip
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": raw})
            self._done(status, started, request_id, body, raw, rows, content)
            return
        replayed = False

        async def _receive() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        answer = _Answer(self._with_headers(send, extra))
        await self.app(scope, _receive, answer.send)
        self._done(answer.status, started, request_id, body, b"".join(answer.body))

    def _done(
        self, status: int, started: float, request_id: str, body: bytes, raw: bytes,
        rows: np.ndarray | None = None, outputs: Any = None,
    ) -> None:  # fmt: skip
        version = CONFIG.model_version
        REQUESTS.labels(version, "ok" if status == 200 else f"http_{status}").inc()
        LATENCY.labels(version).observe(time.perf_counter() - started)
        if status == 200 and LOG is not None:
            if rows is not None:  # parsed already: the writer need not parse it again
                LOG.append(Exchange(request_id, time.time(), rows=rows, outputs=outputs))
            else:
                LOG.append(Exchange(request_id, time.time(), body, raw))

    def _refuse(self, scope: Any) -> tuple[str, int, str] | None:
        if scope["method"] != "POST":
            if FAST:  # BentoML's router says 405 on its own path; here no router runs
                return "bad_method", 405, f"{ROUTE} takes POST with a JSON body"
            return None
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return (
                "too_large",
                413,
                f"request body is {int(length)} bytes, over the limit of {self.limit} "
                "(package.max_body_bytes); send fewer rows per request",
            )
        if not STATE.ready:
            return "not_ready", 503, f"not ready: {STATE.reason}; retry when /readyz answers 200"
        return None

    def _with_headers(self, send: Any, extra: list[tuple[bytes, bytes]]) -> Any:
        headers = self.headers + extra

        async def _send(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + headers
            await send(message)

        return _send


async def _answer_here(body: bytes) -> tuple[int, Any, np.ndarray | None]:
    """Status, JSON content and the parsed rows for one /predict body, on the fast path."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        return 400, {"error": f"the body is not valid JSON ({e})"}, None
    except RecursionError:  # '[' * 100_000: json's recursion limit, not a fault of the server
        return 400, {"error": "the body is nested too deeply to be a table of rows"}, None
    if not isinstance(data, dict) or "inputs" not in data:
        return (
            400,
            {
                "error": "the body must be a JSON object with the field 'inputs' (Field required): "
                'records, columns or rows, e.g. {"inputs": [{"column": 1.0, ...}]}'
            },
            None,
        )
    try:
        rows = _parse(data["inputs"])
    except BadPayload as e:
        return 400, {"error": str(e)}, None
    assert BATCHER is not None  # set before STATE.ready, which PredictGuard checked
    try:
        return 200, await BATCHER.submit(rows), rows
    except Shed:
        return (
            503,
            {
                "error": f"overloaded: the request waited over {CONFIG.batching.max_latency_ms:g} ms "
                "(package.batching.max_latency_ms) for the model; retry, or add replicas"
            },
            None,
        )
    except Exception:
        log.exception("the model failed on a batch")
        return (
            500,
            {"error": "the model failed on this request; the server log has the trace"},
            None,
        )


class _Answer:
    """Keeps the response's status and body; rewrites BentoML's 400 body to name the fault."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self.status = 0
        self.body: list[bytes] = []
        self._start: Any = None

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self.status == 400:  # held back: the body is rewritten, so is its length
                self._start = message
                return
        elif message["type"] == "http.response.body":
            self.body.append(message.get("body", b""))
            if self._start is not None:
                if message.get("more_body"):
                    return
                content = _clear_400(b"".join(self.body))
                headers = [(k, v) for k, v in self._start["headers"] if k != b"content-length"]
                headers.append((b"content-length", str(len(content)).encode()))
                await self._send({**self._start, "headers": headers})
                await self._send({"type": "http.response.body", "body": content})
                return
        await self._send(message)


def _clear_400(raw: bytes) -> bytes:
    """BentoML reports pydantic's error list; lead with the first message, plainly."""
    try:
        data = json.loads(raw)
        first = data["detail"][0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first["msg"]).removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            message = f"the body is not valid JSON ({first.get('ctx', {}).get('error', message)})"
        elif where and where != "inputs":
            message = f"{where}: {message}"
        return json.dumps({"error": message, "detail": data["detail"]}).encode()
    except Exception:
        return raw


class ClientGone(Exception):
    """The client disconnected before its body was whole: there is no one to answer."""


class BodyRefused(Exception):
    """The body cannot be read to its end: answer ``status`` with ``message``."""

    def __init__(self, outcome: str, status: int, message: str) -> None:
        super().__init__(message)
        self.outcome, self.status, self.message = outcome, status, message


async def _read_body(receive: Any, limit: int, idle_s: float) -> bytes:
    """The whole body; :class:`BodyRefused` past ``limit`` bytes (a chunked body has no
    Content-Length to check first) or after ``idle_s`` seconds without a chunk."""
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            message = await asyncio.wait_for(receive(), idle_s)
        except TimeoutError:
            raise BodyRefused(
                "timeout",
                408,
                f"the request body stalled: nothing came for {idle_s:g} s; "
                "send the whole body at once (and end a chunked body with its last chunk)",
            ) from None
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyRefused(
                "too_large",
                413,
                f"request body is over the limit of {limit} bytes "
                "(package.max_body_bytes); send fewer rows per request",
            )
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _request_id(scope: Any) -> str:
    given: bytes = dict(scope["headers"]).get(b"x-request-id", b"")
    if 0 < len(given) <= 128 and given.isascii():
        return given.decode()
    return uuid.uuid4().hex


def _load_and_warm_up() -> None:
    """In the background, so /readyz can say 503 (and why) while this runs."""
    global LOG
    try:
        STATE.reason = "checking the model files and loading the model"
        predictor = serving_model.load(CONFIG, SRC / serving_config.MODEL_DIR)
        STATE.reason = "warming up"
        warm = np.zeros((1, len(CONFIG.columns)), np.float32)
        for _ in range(20):
            predictor.predict(warm)
        if CONFIG.inference_log.enabled:
            # pyarrow imports pandas lazily on its first write; done then, in the writer thread,
            # it races BentoML's batch code, which looks pandas up in sys.modules on every
            # batch and fails (500) on a half-imported module. Import it here, before ready.
            if importlib.util.find_spec("pandas") is not None:
                importlib.import_module("pandas")

            LOG = InferenceLog(
                CONFIG.log_uri(), CONFIG.columns, CONFIG.model_version,
                flush_rows=CONFIG.inference_log.flush_rows,
                flush_interval_s=CONFIG.inference_log.flush_interval_s,
            )  # fmt: skip
        global BATCHER
        BATCHER = GreedyBatcher(
            predictor.predict, max_batch_rows=CONFIG.batching.max_batch_size,
            max_latency_s=CONFIG.batching.max_latency_ms / 1e3, enabled=CONFIG.batching.enabled,
            observe=_observe,
        )  # fmt: skip
        STATE.predictor = predictor
        tuning.freeze_heap()
        STATE.ready = True
        STATE.reason = "ready"
        log.info("%s/%s ready (%s)", CONFIG.model_name, CONFIG.model_version, CONFIG.variant)
    except Exception as e:
        STATE.reason = f"the model could not be loaded: {e}"
        log.error("not ready: %s", STATE.reason)


_BATCHING = CONFIG.batching


@bentoml.service(
    name=f"modelship-{CONFIG.model_name}".lower().replace("_", "-"),
    workers=1,
    threads=1,
    traffic={"timeout": 60, "max_concurrency": 1024},
    metrics={"enabled": True},
    # /predict is counted and timed by PredictGuard's own metrics; BentoML's traffic metrics
    # and OpenTelemetry spans on it cost 40% of the throughput (1,124 -> 1,955 req/s at
    # concurrency 16 on one core) and are kept only where the policy asks for traces.
    logging={"access": {"enabled": False, "skip_paths": [] if CONFIG.tracing else [ROUTE]}},
    tracing={"excluded_urls": [] if CONFIG.tracing else [ROUTE]},
)
class ModelService:
    def __init__(self) -> None:
        threading.Thread(target=_load_and_warm_up, name="model-loader", daemon=True).start()

    def __is_ready__(self) -> bool:
        return STATE.ready

    @bentoml.on_shutdown  # type: ignore[untyped-decorator]
    def flush_inference_log(self) -> None:
        if LOG is not None:
            LOG.close()
            log.info("inference log: %d rows written, %d skipped", LOG.written_rows, LOG.skipped)

    @bentoml.api(  # type: ignore[untyped-decorator]
        route=ROUTE,
        batchable=_BATCHING.enabled,
        max_batch_size=_BATCHING.max_batch_size,
        max_latency_ms=int(_BATCHING.max_latency_ms),
    )
    async def predict(self, inputs: Inputs) -> list[dict[str, Any]]:
        predictor = STATE.predictor
        if predictor is None:  # PredictGuard refuses earlier; this is the last line
            raise bentoml.exceptions.ServiceUnavailable(f"not ready: {STATE.reason}")
        version = CONFIG.model_version
        started = time.perf_counter()
        if CONFIG.onnx:  # microseconds: cheaper inline than a hop to a worker thread
            out = predictor.predict(inputs)
        else:
            import anyio

            out = await anyio.to_thread.run_sync(predictor.predict, inputs)
        MODEL_SECONDS.labels(version).observe(time.perf_counter() - started)
        BATCH_ROWS.labels(version).observe(len(inputs))
        ROWS.labels(version).inc(len(inputs))
        return out


ModelService.add_asgi_middleware(PredictGuard)  # type: ignore[attr-defined]
# BentoML works out the response's media type from the output model's JSON schema, generating
# that schema again for every response (a quarter of the request path's CPU, by py-spy). The
# answer never changes: say it once.
ModelService.apis["predict"].output_spec.media_type = "application/json"  # type: ignore[attr-defined]
