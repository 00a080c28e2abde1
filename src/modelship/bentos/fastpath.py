"""``/predict`` answered in the service's own ASGI layer, with greedy adaptive batching.

BentoML's request path (routing, its pydantic IO model, the batching dispatcher, response
rendering) costs about half a millisecond of CPU per request, which caps one core near 2,000
one-row requests a second. Here a request is parsed once (:mod:`bentos.payload`), queued, and
answered from the same event loop; BentoML still runs the process, its lifecycle, readiness
and ``/metrics``, and the packaging. ``package.server: bentoml`` keeps BentoML's own path.

Batching is greedy: requests that arrive while the model is busy wait in a queue, and the next
call takes all of them (up to ``max_batch_size`` rows) at once; a request alone is answered at
once, never held back for company. A request that waited longer than ``max_latency_ms`` is shed
with 503, as BentoML's dispatcher does, rather than answered too late.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


class Shed(Exception):
    """The request waited past ``max_latency_ms``: answer 503."""


@dataclass
class _Waiting:
    rows: np.ndarray
    future: asyncio.Future[list[dict[str, Any]]]
    since: float


class GreedyBatcher:
    def __init__(
        self,
        predict: Callable[[np.ndarray], list[dict[str, Any]]],
        *,
        max_batch_rows: int,
        max_latency_s: float,
        enabled: bool = True,
        observe: Callable[[int, float], None] = lambda rows, seconds: None,
    ) -> None:
        self.predict = predict
        self.max_batch_rows = max_batch_rows
        self.max_latency_s = max_latency_s
        self.enabled = enabled
        self.observe = observe
        self._queue: deque[_Waiting] = deque()
        self._scheduled = False

    def _call(self, rows: np.ndarray) -> list[dict[str, Any]]:
        started = time.perf_counter()
        out = self.predict(rows)
        self.observe(len(rows), time.perf_counter() - started)
        return out

    async def submit(self, rows: np.ndarray) -> list[dict[str, Any]]:
        if not self.enabled:
            return self._call(rows)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(rows, loop.create_future(), time.monotonic())
        self._queue.append(waiting)
        if not self._scheduled:
            # after the requests already read in this turn of the loop have queued too
            self._scheduled = True
            loop.call_soon(self._drain)
        return await waiting.future

    def _take(self) -> list[_Waiting]:
        now = time.monotonic()
        batch: list[_Waiting] = []
        rows = 0
        while self._queue:
            head = self._queue[0]
            if now - head.since > self.max_latency_s:
                self._queue.popleft()
                if not head.future.done():
                    head.future.set_exception(Shed())
                continue
            if batch and rows + len(head.rows) > self.max_batch_rows:
                break
            batch.append(self._queue.popleft())
            rows += len(head.rows)
        return batch

    def _drain(self) -> None:
        self._scheduled = False
        batch = self._take()
        if not batch:
            return
        try:
            stacked = batch[0].rows if len(batch) == 1 else np.concatenate([w.rows for w in batch])
            outputs = self._call(stacked)
        except Exception as e:  # the model failed: every request in the batch hears why
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(e)
        else:
            start = 0
            for w in batch:
                end = start + len(w.rows)
                if not w.future.done():
                    w.future.set_result(outputs[start:end])
                start = end
        if self._queue and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)
