"""The service's greedy batcher: batches what queued, never holds a lone request, sheds late ones."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from modelship.bentos.fastpath import GreedyBatcher, Shed


def _model(calls: list[int], delay_s: float = 0.0) -> Any:
    def predict(x: np.ndarray) -> list[dict[str, Any]]:
        calls.append(len(x))
        time.sleep(delay_s)
        return [{"prediction": float(row[0])} for row in x]

    return predict


def test_requests_queued_together_share_one_call_and_get_their_own_rows() -> None:
    calls: list[int] = []
    batcher = GreedyBatcher(_model(calls), max_batch_rows=64, max_latency_s=1.0)

    async def main() -> list[list[dict[str, Any]]]:
        rows = [np.full((k, 2), k, np.float32) for k in (1, 2, 3)]
        return await asyncio.gather(*(batcher.submit(r) for r in rows))

    answers = asyncio.run(main())
    assert calls == [6]
    assert [[a["prediction"] for a in answer] for answer in answers] == [[1], [2, 2], [3, 3, 3]]


def test_a_lone_request_is_answered_at_once_and_batches_respect_the_row_cap() -> None:
    calls: list[int] = []
    batcher = GreedyBatcher(_model(calls), max_batch_rows=4, max_latency_s=1.0)

    async def main() -> None:
        await batcher.submit(np.ones((1, 2), np.float32))
        await asyncio.gather(*(batcher.submit(np.ones((2, 2), np.float32)) for _ in range(3)))

    asyncio.run(main())
    assert calls == [1, 4, 2]


def test_requests_that_waited_past_max_latency_are_shed() -> None:
    calls: list[int] = []
    batcher = GreedyBatcher(_model(calls, delay_s=0.05), max_batch_rows=1, max_latency_s=0.02)

    async def main() -> list[Any]:
        rows = [np.ones((1, 2), np.float32) for _ in range(3)]
        return list(
            await asyncio.gather(*(batcher.submit(r) for r in rows), return_exceptions=True)
        )

    answers = asyncio.run(main())
    assert isinstance(answers[0], list)  # the first ran; the others waited 50 ms behind it
    assert all(isinstance(a, Shed) for a in answers[1:])


def test_a_failing_model_fails_every_request_in_its_batch() -> None:
    def broken(x: np.ndarray) -> list[dict[str, Any]]:
        raise RuntimeError("boom")

    batcher = GreedyBatcher(broken, max_batch_rows=8, max_latency_s=1.0)

    async def main() -> list[Any]:
        rows = [np.ones((1, 2), np.float32) for _ in range(2)]
        return list(
            await asyncio.gather(*(batcher.submit(r) for r in rows), return_exceptions=True)
        )

    assert [str(a) for a in asyncio.run(main())] == ["boom", "boom"]


def test_batching_off_calls_the_model_per_request() -> None:
    calls: list[int] = []
    batcher = GreedyBatcher(_model(calls), max_batch_rows=64, max_latency_s=1.0, enabled=False)

    async def main() -> None:
        await asyncio.gather(*(batcher.submit(np.ones((1, 2), np.float32)) for _ in range(3)))

    asyncio.run(main())
    assert calls == [1, 1, 1]


def test_nothing_queued_means_no_call() -> None:
    calls: list[int] = []
    batcher = GreedyBatcher(_model(calls), max_batch_rows=4, max_latency_s=1.0)
    batcher._drain()
    assert calls == []
