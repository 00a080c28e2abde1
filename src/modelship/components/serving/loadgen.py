"""An open-loop load generator: requests leave on a schedule, whatever the server does.

Request *i* of a phase at rate *r* is due at ``start + i / r``. Latency is measured from that
due time, not from when the request actually left, so a server that stalls is charged for the
requests that queued behind the stall (no coordinated omission, as wrk2 and k6's arrival-rate
executors do). A scheduler wakes, sends every request that is due, and sleeps until the next;
``client_lag`` records how far behind schedule it ever was, so a client that cannot hold the
rate is seen, not mistaken for a slow server.

Bodies are drawn from a list (rows of the validation data) in a fixed pseudo-random order.
Warm-up requests are sent but not recorded.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelship.core.histogram import LatencyHistogram


@dataclass(frozen=True)
class Phase:
    rate: float
    duration_s: float


@dataclass
class Progress:
    elapsed_s: float
    total_s: float
    sent: int
    completed: int
    errors: int
    p99_ms: float
    warming_up: bool


@dataclass
class LoadResult:
    phases: list[Phase]
    warmup_s: float
    #: recorded (after warm-up) requests
    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    duration_s: float = 0.0
    client_lag_ms: float = 0.0
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: per recorded request: due time (s from the end of warm-up), latency (s), ok
    due: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    succeeded: list[bool] = field(default_factory=list)
    #: why the run ended early (the server went away), if it did
    stopped: str | None = None

    @property
    def target_rate(self) -> float:
        total = sum(p.duration_s for p in self.phases)
        return sum(p.rate * p.duration_s for p in self.phases) / total if total else 0.0

    @property
    def achieved_rate(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    @property
    def error_rate(self) -> float:
        return sum(self.errors.values()) / self.sent if self.sent else 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "target_rate": round(self.target_rate, 1),
            "achieved_rate": round(self.achieved_rate, 1),
            "sent": self.sent,
            "ok": self.ok,
            "error_rate": round(self.error_rate, 6),
            "errors": dict(self.errors),
            "latency_ms": self.histogram.summary_ms(),
            "client_lag_ms": round(self.client_lag_ms, 1),
            "duration_s": round(self.duration_s, 2),
            "stopped": self.stopped,
        }

    def timeline(self, bucket_s: float = 1.0) -> list[dict[str, float]]:
        """Per ``bucket_s`` of due time: requests, errors and latency percentiles (ms)."""
        if not self.due:
            return []
        due = np.asarray(self.due)
        lat = np.asarray(self.latency) * 1e3
        good = np.asarray(self.succeeded)
        rows = []
        for k in range(math.ceil(due.max() / bucket_s) + 1):
            sel = (due >= k * bucket_s) & (due < (k + 1) * bucket_s)
            if not sel.any():
                continue
            values = lat[sel]
            rows.append({
                "t_s": k * bucket_s, "requests": int(sel.sum()),
                "errors": int((~good[sel]).sum()), "rate": float(sel.sum() / bucket_s),
                "p50_ms": float(np.percentile(values, 50)),
                "p99_ms": float(np.percentile(values, 99)), "max_ms": float(values.max()),
            })  # fmt: skip
        return rows


def _error_kind(e: BaseException) -> str:
    import aiohttp

    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    if isinstance(e, aiohttp.ClientConnectorError):
        return "connection_refused"
    if isinstance(e, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return "disconnected"
    return type(e).__name__


async def drive(
    url: str,
    bodies: Sequence[bytes],
    phases: Sequence[Phase],
    *,
    warmup_s: float = 0.0,
    connections: int = 256,
    timeout_s: float = 10.0,
    progress: Callable[[Progress], None] | None = None,
    alive: Callable[[], str | None] = lambda: None,
    seed: int = 0,
) -> LoadResult:
    """Drive ``phases`` of open-loop load at ``url``; warm-up first, at the first phase's rate.

    ``alive`` is asked every half second; a non-None answer (the server exited) ends the run
    and is kept as :attr:`LoadResult.stopped`.
    """
    import aiohttp

    result = LoadResult(list(phases), warmup_s)
    schedule: list[tuple[float, float]] = []  # (start offset, rate) of each stretch
    if warmup_s > 0:
        schedule.append((0.0, phases[0].rate))
    offset = warmup_s
    for p in phases:
        schedule.append((offset, p.rate))
        offset += p.duration_s
    total_s = offset
    order = random.Random(seed)
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    in_flight: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = loop.time()

        async def one(due: float, body: bytes) -> None:
            recorded = due >= warmup_s
            error: str | None = None
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        error = f"http_{response.status}"
            except Exception as e:  # every failure is a figure, never a crash of the run
                error = _error_kind(e)
            if not recorded:
                return
            latency = loop.time() - start - due
            result.sent += 1
            result.due.append(due - warmup_s)
            result.latency.append(latency)
            result.succeeded.append(error is None)
            if error is None:
                result.ok += 1
                result.histogram.record(latency)
            else:
                result.errors[error] += 1

        def due_times() -> Any:
            for k, (begin, rate) in enumerate(schedule):
                end = schedule[k + 1][0] if k + 1 < len(schedule) else total_s
                n = round((end - begin) * rate)
                for i in range(n):
                    yield begin + i / rate

        next_report = 0.0
        next_check = 0.0
        for due in due_times():
            now = loop.time() - start
            if due > now:
                await asyncio.sleep(due - now)
                now = loop.time() - start
            elif due >= warmup_s:
                result.client_lag_ms = max(result.client_lag_ms, (now - due) * 1e3)
            task = loop.create_task(one(due, bodies[order.randrange(len(bodies))]))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            if now >= next_check:
                next_check = now + 0.5
                result.stopped = alive()
                if result.stopped:
                    break
            if progress is not None and now >= next_report:
                next_report = now + 0.5
                progress(Progress(now, total_s, result.sent, result.ok + sum(result.errors.values()),
                                  sum(result.errors.values()), result.histogram.percentile(99) * 1e3,
                                  now < warmup_s))  # fmt: skip
        if in_flight:
            await asyncio.wait(in_flight, timeout=timeout_s + 1)
        result.duration_s = max(1e-9, min(loop.time() - start, total_s) - warmup_s)
    return result


def run(url: str, bodies: Sequence[bytes], phases: Sequence[Phase], **kwargs: Any) -> LoadResult:
    return asyncio.run(drive(url, bodies, phases, **kwargs))
