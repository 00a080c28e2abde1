"""The gateway's HTTP server (aiohttp): proxy, mirror, health checks, metrics, admin API.

Everything a request touches lives on one event loop, so a weight change is one assignment:
the next request sees it, requests in flight finish on the backend they were sent to. A
request whose backend cannot be reached (refused, reset, crashed mid-request) is sent once to
the other backend, so a crashing challenger costs clients nothing while it is ejected; a
backend that answers, even with a 5xx, is never retried (its answer is the result).

A mirrored prediction is compared with the champion's answer to the same request once both
are in, off the client's path: the client never waits for the copy or the comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from modelship.core.traffic import BadWeights, Weights
from modelship.gateway.routing import Variant, choose, effective_weight
from modelship.gateway.stats import (
    UNPAIRED,
    Answer,
    GatewayStats,
    Mode,
    Outcome,
    compare_answers,
    outcome_of,
)

#: request headers passed on to the backend; everything else stays at the gateway
_FORWARD = ("content-type", "content-length", "accept", "x-request-id")
#: response headers passed back to the client
_RETURN = ("content-type", "x-request-id", "x-modelship-model", "x-modelship-digest")
#: copies to the challenger in flight at once; more are dropped, never queued
_MIRROR_LIMIT = 64
#: the one path whose answers are predictions; the challenger's are compared with the champion's
_PREDICT = "/predict"
#: answers larger than this (bytes) are compared in a thread, to keep the event loop free
_PAIR_INLINE_BYTES = 256 * 1024
#: past the request timeout, how long a copy's answer waits for the champion's
_PAIR_GRACE_S = 5.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger("modelship.gateway")


@dataclass
class Backend:
    url: str
    version: str = ""
    healthy: bool = True
    failures: int = 0

    def failed(self, eject_after: int) -> None:
        self.failures += 1
        if self.failures >= eject_after:
            self.healthy = False

    def passed(self) -> None:
        self.failures = 0
        self.healthy = True


@dataclass
class GatewayConfig:
    token: str
    champion: Backend
    challenger: Backend | None = None
    #: header whose value keeps a user on one variant; the request id when it is absent
    sticky_header: str | None = None
    health_interval_s: float = 0.5
    #: consecutive failed checks (or unreachable requests) before a backend is ejected
    eject_after: int = 2
    request_timeout_s: float = 30.0
    weights: Weights = field(default_factory=Weights)
    #: the largest request body passed on; larger ones are refused (413) before they are read
    max_body_bytes: int = 64 * 1024 * 1024
    #: seconds a request body may take to arrive in full before it is refused (408): a client
    #: that stops sending mid-body must not hold a connection (and its memory) forever
    body_timeout_s: float = 30.0


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.backends: dict[Variant, Backend] = {Variant.CHAMPION: config.champion}
        if config.challenger is not None:
            self.backends[Variant.CHALLENGER] = config.challenger
        self.weights = config.weights
        self.stats = GatewayStats()
        self.session: aiohttp.ClientSession | None = None
        #: copies in flight to the challenger, at most _MIRROR_LIMIT
        self._mirrors: set[asyncio.Task[None]] = set()
        #: copies answered, waiting for the champion's answer to compare with
        self._pairs: set[asyncio.Task[None]] = set()
        self._random = random.Random()
        #: changes each start: counts in a snapshot only compare with the same instance's
        self.instance = uuid.uuid4().hex

    # -- routing -----------------------------------------------------------------------------

    def challenger_share(self) -> float:
        if Variant.CHALLENGER not in self.backends:
            return 0.0
        healthy = {v: b.healthy for v, b in self.backends.items()}
        return effective_weight(self.weights.challenger, healthy)

    def _key(self, request: web.Request) -> str | None:
        if self.config.sticky_header is None:
            return None
        return request.headers.get(self.config.sticky_header) or request.headers.get("x-request-id")

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            body = await _read_body(request, self.config)
        except ClientGone:
            # the answer would reach no one; aiohttp drops it quietly on the closed connection
            log.info(
                "%s %s: the client went away before sending the whole body",
                request.method,
                request.path,
            )
            return _error(400, "the request body ended early")
        headers = {k: v for k in _FORWARD if (v := request.headers.get(k)) is not None}
        variant = choose(self.challenger_share(), self._key(request), self._random.random())
        champion_answer: asyncio.Future[Answer | None] | None = None
        if (
            variant is Variant.CHAMPION
            and self.weights.mirror > 0
            and self._random.random() < self.weights.mirror
        ):
            champion_answer = self._mirror(request, body, headers)
        try:
            answer = await self._forward(request, body, headers, variant, started, champion_answer)
        finally:
            if champion_answer is not None and not champion_answer.done():
                # the challenger answered instead, the champion failed, or the client left:
                # the copy's answer has nothing to be compared with
                champion_answer.set_result(None)
        if request.transport is None or request.transport.is_closing():
            # aiohttp writes the answer to a closed connection without a word: say it once
            log.info(
                "%s %s: the client went away before its answer (%d, %s)",
                request.method,
                request.path,
                answer.status,
                answer.headers.get("x-modelship-variant", "the gateway's own"),
            )
        return answer

    async def _forward(
        self,
        request: web.Request,
        body: bytes,
        headers: dict[str, str],
        variant: Variant,
        started: float,
        champion_answer: asyncio.Future[Answer | None] | None,
    ) -> web.StreamResponse:
        for attempt in (variant, variant.other):
            backend = self.backends.get(attempt)
            if backend is None or (attempt is not variant and not backend.healthy):
                continue
            try:
                status, payload, answer_headers = await self._send(backend, request, body, headers)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, aiohttp.InvalidURL):
                backend.failed(self.config.eject_after)
                self.stats.retried[attempt] += 1
                continue
            except TimeoutError:
                self.stats.record(attempt, Mode.LIVE, Outcome.ERROR, time.perf_counter() - started)
                return _error(504, f"the {attempt} did not answer within the gateway's timeout")
            self.stats.record(attempt, Mode.LIVE, outcome_of(status), time.perf_counter() - started)
            if champion_answer is not None and attempt is Variant.CHAMPION:
                champion_answer.set_result((status, payload))
            answer_headers["x-modelship-variant"] = str(attempt)
            return web.Response(body=payload, status=status, headers=answer_headers)
        self.stats.record(variant, Mode.LIVE, Outcome.UNREACHABLE, time.perf_counter() - started)
        return _error(502, "no backend could be reached; see the gateway's /admin/weights")

    async def _send(
        self, backend: Backend, request: web.Request, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        assert self.session is not None
        url = backend.url + request.path_qs
        async with self.session.request(request.method, url, data=body, headers=headers) as r:
            payload = await r.read()
            kept = {k: v for k in _RETURN if (v := r.headers.get(k)) is not None}
            return r.status, payload, kept

    def _mirror(
        self, request: web.Request, body: bytes, headers: dict[str, str]
    ) -> asyncio.Future[Answer | None] | None:
        """Send a copy to the challenger; the future to resolve with the champion's answer.

        None where no copy is sent or its answer is not a prediction to compare.
        """
        backend = self.backends.get(Variant.CHALLENGER)
        if backend is None or not backend.healthy or len(self._mirrors) >= _MIRROR_LIMIT:
            return None
        champion: asyncio.Future[Answer | None] | None = None
        if request.method == "POST" and request.path == _PREDICT:
            champion = asyncio.get_running_loop().create_future()

        async def send() -> None:
            started = time.perf_counter()
            answer: Answer | None = None
            try:
                status, payload, _ = await self._send(backend, request, body, headers)
                outcome = outcome_of(status)
                answer = (status, payload)
            except (aiohttp.ClientError, TimeoutError):
                outcome = Outcome.UNREACHABLE
            self.stats.record(
                Variant.CHALLENGER, Mode.MIRROR, outcome, time.perf_counter() - started
            )
            if champion is not None:
                # a task of its own: waiting for a slow champion must not hold a mirror slot
                pair = asyncio.create_task(self._pair(champion, answer))
                self._pairs.add(pair)
                pair.add_done_callback(self._pairs.discard)

        task = asyncio.create_task(send())
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)
        return champion

    async def _pair(
        self, champion: asyncio.Future[Answer | None], challenger: Answer | None
    ) -> None:
        # proxy resolves the future however the live request ends; the bound is for safety
        try:
            ours = await asyncio.wait_for(
                asyncio.shield(champion), self.config.request_timeout_s + _PAIR_GRACE_S
            )
        except TimeoutError:
            ours = None
        try:
            size = max(len(ours[1]) if ours else 0, len(challenger[1]) if challenger else 0)
            if size > _PAIR_INLINE_BYTES:
                delta = await asyncio.to_thread(compare_answers, ours, challenger)
            else:
                delta = compare_answers(ours, challenger)
        except Exception:  # a fault in the comparison must cost the comparison, nothing more
            delta = UNPAIRED
        self.stats.pair(delta)

    # -- health --------------------------------------------------------------------------------

    async def check_health(self) -> None:
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(total=max(0.2, self.config.health_interval_s * 2))
        for backend in list(self.backends.values()):
            try:
                async with self.session.get(f"{backend.url}/readyz", timeout=timeout) as r:
                    ok = r.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                backend.passed()
            else:
                backend.failed(self.config.eject_after)

    async def _health_loop(self) -> None:
        while True:
            await self.check_health()
            await asyncio.sleep(self.config.health_interval_s)

    # -- admin ---------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "challenger": self.weights.challenger,
            "mirror": self.weights.mirror,
            "effective_challenger": self.challenger_share(),
            "backends": {str(v): asdict(b) for v, b in self.backends.items()},
        }

    async def get_weights(self, request: web.Request) -> web.Response:
        return web.json_response(self.describe())

    async def put_weights(self, request: web.Request) -> web.Response:
        data = await _json_object(request, self.config)
        unknown = set(data) - {"challenger", "mirror"}
        if unknown:
            return _error(400, f"unknown keys {sorted(unknown)}; send challenger and/or mirror")
        mirror = data.get("mirror", self.weights.mirror)
        if isinstance(mirror, bool) or not isinstance(mirror, int | float):
            return _error(400, f"mirror share must be a number from 0 to 1, got {mirror!r}")
        try:
            weights = Weights(
                challenger=data.get("challenger", self.weights.challenger), mirror=float(mirror)
            )
        except BadWeights as e:
            return _error(400, str(e))
        if weights.challenger > 0 and Variant.CHALLENGER not in self.backends:
            return _error(409, "no challenger backend: PUT /admin/backends first")
        self.weights = weights
        return web.json_response(self.describe())

    async def put_backends(self, request: web.Request) -> web.Response:
        data = await _json_object(request, self.config)
        unknown = set(data) - {"champion", "challenger"}
        if unknown:
            return _error(400, f"unknown keys {sorted(unknown)}; send champion and/or challenger")
        for name, spec in data.items():
            variant = Variant(name)
            if spec is None:
                if variant is Variant.CHAMPION:
                    return _error(400, "the champion cannot be removed")
                self.backends.pop(variant, None)
                self.weights = Weights(0, 0.0)
                continue
            if not isinstance(spec, dict) or not _backend_url(spec.get("url")):
                return _error(400, f'{name}: send {{"url": "http://host:port", "version": "N"}}')
            self.backends[variant] = Backend(
                str(spec["url"]).rstrip("/"), str(spec.get("version", ""))
            )
        return web.json_response(self.describe())

    async def promote(self, request: web.Request) -> web.Response:
        """The challenger becomes the champion and takes all traffic at once."""
        challenger = self.backends.get(Variant.CHALLENGER)
        if challenger is None:
            return _error(409, "no challenger to promote")
        self.backends = {Variant.CHAMPION: challenger}
        self.weights = Weights(0, 0.0)
        return web.json_response(self.describe())

    # -- the rest ------------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        share = self.challenger_share()
        weights = {"champion": 100 - share, "challenger": share}
        healthy = {str(v): b.healthy for v, b in self.backends.items()}
        return web.Response(
            text=self.stats.prometheus(weights, healthy),
            content_type="text/plain",
            headers={"x-prometheus-format": "0.0.4"},
        )

    async def snapshot(self, request: web.Request) -> web.Response:
        extra = {"weights": self.describe(), "instance": self.instance}
        return web.json_response(self.stats.snapshot() | extra)

    async def readyz(self, request: web.Request) -> web.Response:
        if not any(b.healthy for b in self.backends.values()):
            return _error(503, "no healthy backend")
        return web.json_response({"ready": True})


def _backend_url(url: Any) -> bool:
    """Whether ``url`` is an absolute http(s) URL with a host, one a request can be sent to."""
    if not isinstance(url, str):
        return False
    try:
        parsed = URL(url)
        return parsed.scheme in ("http", "https") and bool(parsed.host) and parsed.port is not None
    except ValueError:
        return False


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class ClientGone(Exception):
    """The client disconnected before its request body was whole."""


def _refused(status: int, message: str) -> web.HTTPException:
    """A refusal to raise from a handler, with the gateway's ``{"error": ...}`` body."""
    body, kind = json.dumps({"error": message}), "application/json"
    if status == 413:
        return web.HTTPRequestEntityTooLarge(max_size=0, text=body, content_type=kind)
    if status == 408:
        return web.HTTPRequestTimeout(text=body, content_type=kind)
    return web.HTTPBadRequest(text=body, content_type=kind)


async def _read_body(request: web.Request, config: GatewayConfig) -> bytes:
    """The whole body, refused (413) when its declared length is over the limit, before a
    byte is read, and (408) when it does not arrive in full within ``body_timeout_s``."""
    declared = request.content_length
    if declared is not None and declared > config.max_body_bytes:
        raise _refused(
            413,
            f"request body of {declared} bytes is over the gateway's limit "
            f"of {config.max_body_bytes}",
        )
    try:
        return await asyncio.wait_for(request.read(), config.body_timeout_s)
    except TimeoutError:
        raise _refused(
            408, f"the request body did not arrive in full within {config.body_timeout_s:g} s"
        ) from None
    except ConnectionResetError:
        raise ClientGone from None


async def _json_object(request: web.Request, config: GatewayConfig) -> dict[str, Any]:
    try:
        data = json.loads(await _read_body(request, config) or b"{}")
    except ClientGone:
        raise web.HTTPBadRequest() from None  # no one is left to read it
    except ValueError as e:
        raise _refused(400, f"body is not JSON: {e}") from e
    except RecursionError:
        raise _refused(400, "body is nested too deeply to be the admin API's JSON") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "send a JSON object"}), content_type="application/json"
        )
    return data


def _authenticated(token: str) -> Callable[[Handler], Handler]:
    def wrap(handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            sent = request.headers.get("authorization", "")
            if not (sent.startswith("Bearer ") and hmac.compare_digest(sent[7:], token)):
                return web.json_response(
                    {"error": "the admin API needs 'Authorization: Bearer <token>' "
                              "(the gateway's MODELSHIP_GATEWAY_TOKEN)"},
                    status=401,
                    headers={"www-authenticate": 'Bearer realm="modelship-gateway"'},
                )  # fmt: skip
            return await handler(request)

        return checked

    return wrap


def create_app(config: GatewayConfig) -> web.Application:
    if not config.token:
        raise ValueError("the gateway needs an admin token")
    gateway = Gateway(config)
    admin = _authenticated(config.token)
    app = web.Application(client_max_size=config.max_body_bytes)
    app["gateway"] = gateway
    app.router.add_get("/admin/weights", admin(gateway.get_weights))
    app.router.add_put("/admin/weights", admin(gateway.put_weights))
    app.router.add_put("/admin/backends", admin(gateway.put_backends))
    app.router.add_post("/admin/promote", admin(gateway.promote))
    app.router.add_get("/metrics", gateway.metrics)
    app.router.add_get("/stats", gateway.snapshot)
    app.router.add_get("/readyz", gateway.readyz)
    app.router.add_route("*", "/{tail:.*}", gateway.proxy)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, enable_cleanup_closed=True)
        gateway.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=config.request_timeout_s),
            auto_decompress=False,
        )
        checker = asyncio.create_task(gateway._health_loop())
        yield
        checker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checker
        await gateway.session.close()

    app.cleanup_ctx.append(lifecycle)
    return app
