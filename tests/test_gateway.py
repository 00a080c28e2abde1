"""The traffic gateway against real processes: two stand-in servers behind `python -m modelship.gateway`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from modelship.components.serving.loadgen import Phase, run
from modelship.core.ports import free_port
from modelship.core.traffic import Weights
from modelship.gateway.app import Backend, GatewayConfig, create_app
from modelship.gateway.routing import Variant, bucket, choose, effective_weight
from modelship.gateway.stats import (
    UNPAIRED,
    GatewayStats,
    Paired,
    compare_answers,
    compare_rows,
    paired_between,
    traffic_between,
)
from tests.support import BODY, Stack, call, gateway_stack


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[Stack]:
    with gateway_stack(tmp_path, "--sticky-header", "x-user") as s:
        yield s


# -- pure routing ------------------------------------------------------------------------------


def test_sticky_keys_only_move_towards_the_challenger() -> None:
    keys = [f"user-{i}" for i in range(2000)]
    at_10 = {k for k in keys if choose(10, k, 0.99) is Variant.CHALLENGER}
    at_50 = {k for k in keys if choose(50, k, 0.99) is Variant.CHALLENGER}
    assert at_10 < at_50  # raising the weight never sends a challenger user back
    assert 0.07 < len(at_10) / len(keys) < 0.13
    assert all(0 <= bucket(k) < 100 for k in keys)


def test_an_ejected_backend_gives_its_share_to_the_other() -> None:
    both = {Variant.CHAMPION: True, Variant.CHALLENGER: True}
    assert effective_weight(30, both) == 30
    assert effective_weight(30, both | {Variant.CHALLENGER: False}) == 0
    assert effective_weight(30, both | {Variant.CHAMPION: False}) == 100


# -- pure pairing ------------------------------------------------------------------------------


def rows(*predictions: Any) -> list[dict[str, Any]]:
    return [{"prediction": p} for p in predictions]


def answer(body: Any, status: int = 200) -> tuple[int, bytes]:
    return status, body if isinstance(body, bytes) else json.dumps(body).encode()


def test_labels_agree_as_json_values() -> None:
    paired = compare_rows(rows(1, 1, "a", True, 3.0), rows(1.0, 2, "a", 1, 3))
    assert paired == Paired(label_rows=5, label_disagreements=2)  # 1 vs 2, true vs 1
    assert compare_rows(rows("1", False), rows(1, 0)).label_disagreements == 2


def test_a_fractional_number_makes_a_score_row() -> None:
    paired = compare_rows(rows(3.75, 2, 1.0, "3.5"), rows(3.5, 2.5, 1.0, 3.5))
    assert (paired.score_rows, paired.score_abs_diff_sum) == (2, 0.75)  # 0.25 + 0.5
    assert (paired.label_rows, paired.label_disagreements) == (2, 1)  # 1.0 = 1.0, "3.5" != 3.5
    assert paired.rows == 4 and paired.mean_score_diff == 0.375


def test_probabilities_count_the_largest_difference_of_a_row() -> None:
    ours: list[dict[str, Any]] = [{"prediction": 1, "probabilities": [0.25, 0.75]},
            {"prediction": 0, "probabilities": [0.5, 0.5]},
            {"prediction": 0, "probabilities": [0.5, 0.5]},
            {"prediction": 0}]  # fmt: skip
    theirs: list[dict[str, Any]] = [{"prediction": 0, "probabilities": [0.625, 0.375]},
              {"prediction": 0, "probabilities": [0.5, 0.25, 0.25]},  # other classes: not compared
              {"prediction": 0, "probabilities": [0.5, 0.5]},
              {"prediction": 0, "probabilities": [1.0, 0.0]}]  # fmt: skip
    paired = compare_rows(ours, theirs)
    assert paired == Paired(label_rows=4, label_disagreements=1, probability_rows=2,
                            probability_abs_diff_sum=0.375)  # fmt: skip
    assert paired.mean_probability_diff == 0.1875


@pytest.mark.parametrize(
    ("champion", "challenger"),
    [
        (None, answer(rows(1))),  # the live request did not go to the champion, or failed
        (answer(rows(1)), None),  # the copy never came back
        (answer(rows(1), 500), answer(rows(1))),
        (answer(rows(1)), answer({"error": "boom"}, 503)),
        (answer(rows(1)), answer(rows(1, 1))),  # another number of rows
        (answer(rows(1)), answer({"variant": "challenger"})),
        (answer(rows(1)), answer(b"not json")),
        (answer(rows(1)), answer(b'[{"prediction": NaN}]')),
        (answer(rows(1)), answer(b'[{"prediction": 1e999}]')),
        (answer(rows(1)), answer([{"label": 1}])),
        (answer(rows(1)), answer(rows(None))),
        (answer(rows(1)), answer(rows([1, 2]))),
        (answer(rows(1)), answer(b"[" * 100_000)),
        (answer(rows(10**400)), answer(rows(0.5))),  # beyond a float: no distance to take
    ],
)
def test_answers_that_cannot_be_compared_are_unpaired(
    champion: tuple[int, bytes] | None, challenger: tuple[int, bytes] | None
) -> None:
    assert compare_answers(champion, challenger) == UNPAIRED


def test_answers_compare_their_rows() -> None:
    ours = answer([{"prediction": "benign", "probabilities": [0.25, 0.75]}, {"prediction": 2.5}])
    theirs = answer([{"prediction": "malignant", "probabilities": [0.5, 0.5]},
                     {"prediction": 2.0}], 201)  # fmt: skip
    assert compare_answers(ours, theirs) == Paired(1, 1, 1, 0.5, 1, 0.25)
    assert compare_answers(answer([]), answer([])) == Paired()


def test_paired_between_takes_the_difference_of_two_snapshots() -> None:
    stats = GatewayStats()
    before = stats.snapshot()
    assert before["paired"] == {
        "label_rows": 0, "label_disagreements": 0, "score_rows": 0, "score_abs_diff_sum": 0.0,
        "probability_rows": 0, "probability_abs_diff_sum": 0.0, "unpaired": 0,
    }  # fmt: skip
    stats.pair(Paired(label_rows=10, label_disagreements=1, unpaired=2))
    middle = json.loads(json.dumps(stats.snapshot()))  # as /stats serves it
    stats.pair(Paired(label_rows=30, label_disagreements=3, score_rows=4, score_abs_diff_sum=2.0))
    stats.pair(UNPAIRED)
    after = stats.snapshot()
    step = paired_between(middle, after)
    assert step == Paired(label_rows=30, label_disagreements=3, score_rows=4,
                          score_abs_diff_sum=2.0, unpaired=1)  # fmt: skip
    assert step.rows == 34 and step.label_disagreement_rate == 0.1 and step.mean_score_diff == 0.5
    assert math.isnan(step.mean_probability_diff)
    assert paired_between(before, after).unpaired == 3
    # a source that pairs nothing (no "paired" key): zeros, not a negative step
    assert paired_between({}, after).label_rows == 40
    assert paired_between(after, {}) == Paired()
    nothing = paired_between({}, {})
    assert nothing.label_disagreement_rate == 0.0 and math.isnan(nothing.mean_score_diff)


def test_pairs_are_counted_in_the_exposition() -> None:
    stats = GatewayStats()
    stats.pair(Paired(label_rows=7, label_disagreements=2, score_rows=3, unpaired=1))
    text = stats.prometheus({}, {})
    for line in ('modelship_gateway_paired_rows_total{kind="label"} 7',
                 'modelship_gateway_paired_rows_total{kind="score"} 3',
                 "modelship_gateway_paired_disagreements_total 2",
                 "modelship_gateway_unpaired_total 1",
                 "# TYPE modelship_gateway_unpaired_total counter"):  # fmt: skip
        assert line in text.splitlines()


# -- one event loop: the gateway and stand-in Bentos in this process ---------------------------


#: a classifier's answer to two rows, and one that disagrees on both
LABELS = [{"prediction": "benign", "probabilities": [0.25, 0.75]},
          {"prediction": "malignant", "probabilities": [0.875, 0.125]}]  # fmt: skip
FLIPPED = [{"prediction": "malignant", "probabilities": [0.5, 0.5]},
           {"prediction": "benign", "probabilities": [0.375, 0.625]}]  # fmt: skip
#: a regressor's answers to two rows, 0.25 and 0.5 apart
SCORES = [{"prediction": 1.25}, {"prediction": 3.0}]
OTHER_SCORES = [{"prediction": 1.5}, {"prediction": 2.5}]


def slow_bento(delay_s: float, copies: int) -> web.Application:
    async def predict(request: web.Request) -> web.Response:
        await asyncio.sleep(delay_s)
        return web.json_response(LABELS * copies)

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    app = web.Application()
    app.router.add_post("/predict", predict)
    app.router.add_get("/readyz", ready)
    return app


async def mirror_once(
    champion_s: float | None, challenger_s: float, copies: int = 1
) -> tuple[float, Paired]:
    """One mirrored request (champion None: not listening): the client's wait, what paired."""
    async with contextlib.AsyncExitStack() as stack:
        urls = {}
        for name, delay in (("champion", champion_s), ("challenger", challenger_s)):
            if delay is None:
                urls[name] = f"http://127.0.0.1:{free_port()}"
                continue
            server = await stack.enter_async_context(TestServer(slow_bento(delay, copies)))
            urls[name] = str(server.make_url("")).rstrip("/")
        config = GatewayConfig("t", Backend(urls["champion"]), Backend(urls["challenger"]),
                               health_interval_s=60, weights=Weights(0, 1.0))  # fmt: skip
        app = create_app(config)
        client = await stack.enter_async_context(TestClient(TestServer(app)))
        started = time.perf_counter()
        async with client.post("/predict", json={"inputs": [[1.0], [2.0]]}) as r:
            assert r.status == 200 and await r.json() == LABELS * copies
        waited = time.perf_counter() - started
        stats: GatewayStats = app["gateway"].stats
        for _ in range(200):
            if stats.paired != Paired():
                break
            await asyncio.sleep(0.02)
        return waited, stats.paired


def test_the_client_does_not_wait_for_the_mirror() -> None:
    waited, paired = asyncio.run(mirror_once(0.0, 1.0))
    assert waited < 0.6
    assert paired == Paired(label_rows=2, probability_rows=2)


def test_the_mirror_waits_for_a_slower_champion() -> None:
    _, paired = asyncio.run(mirror_once(0.5, 0.0))
    assert paired == Paired(label_rows=2, probability_rows=2)


def test_large_answers_are_compared_too() -> None:
    _, paired = asyncio.run(mirror_once(0.0, 0.0, copies=3000))  # ~400 kB: off the event loop
    assert paired == Paired(label_rows=6000, probability_rows=6000)


def test_a_request_the_champion_did_not_answer_is_unpaired() -> None:
    # the champion cannot be reached: the challenger answers the client, nothing to compare with
    _, paired = asyncio.run(mirror_once(None, 0.0))
    assert paired == UNPAIRED


# -- real processes ----------------------------------------------------------------------------


@pytest.mark.slow
def test_weights_split_and_sticky_users(stack: Stack) -> None:
    assert Counter(stack.predict() for _ in range(30)) == {"champion": 30}
    stack.weights(challenger=30)
    seen = Counter(stack.predict() for _ in range(400))
    assert 0.2 < seen["challenger"] / 400 < 0.4, seen
    # one user sees one variant, whatever the draw
    for user in ("alice", "bob", "carol", "dave"):
        assert len({stack.predict({"x-user": user}) for _ in range(15)}) == 1
    stack.weights(challenger=100)
    assert Counter(stack.predict() for _ in range(30)) == {"challenger": 30}


def settle(url: str, done: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
    """/stats once ``done`` holds for it: mirrored copies finish after the answers."""
    deadline = time.monotonic() + timeout
    while True:
        _, snap = call(f"{url}/stats")
        if done(snap) or time.monotonic() > deadline:
            return snap
        time.sleep(0.05)


@pytest.mark.slow
def test_mirror_copies_to_the_challenger_and_never_answers_with_it(stack: Stack) -> None:
    stack.weights(challenger=0, mirror=1.0)
    assert Counter(stack.predict() for _ in range(50)) == {"champion": 50}
    snap = settle(stack.url, lambda s: s["paired"]["unpaired"] >= 50)
    assert snap["challenger/mirror"]["outcomes"]["ok"] == 50
    assert "challenger/live" not in snap
    # the stand-ins' {"variant": ...} is not a Bento's rows: nothing to compare
    assert snap["paired"]["unpaired"] == 50 and snap["paired"]["label_rows"] == 0


@pytest.fixture()
def answering(tmp_path: Path) -> Iterator[Stack]:
    """A gateway mirroring everything, and stand-ins answering like Bentos, to swap in."""
    s = Stack(tmp_path)
    servers = {
        "champion": ["--answer", json.dumps(LABELS)],
        "challenger": ["--answer", json.dumps(LABELS)],
        "flipper": [
            "--answer",
            json.dumps(LABELS),
            "--every",
            "10",
            "--other",
            json.dumps(FLIPPED),
        ],
        "scorer": ["--answer", json.dumps(SCORES)],
        "other-scorer": ["--answer", json.dumps(OTHER_SCORES)],
        "failing": ["--status", "500"],
    }
    try:
        for name, args in servers.items():
            s.ports.setdefault(name, free_port())
            s.start_backend(name, *args)
        s.start_gateway()
        s.weights(challenger=0, mirror=1.0)
        yield s
    finally:
        s.stop()


def exchange(stack: Stack, n: int, **backends: str) -> Paired:
    """Point the gateway at ``backends``, send ``n`` two-row requests: what was compared."""
    if backends:
        spec = {variant: {"url": f"http://127.0.0.1:{stack.ports[name]}", "version": name}
                for variant, name in backends.items()}  # fmt: skip
        status, answer = call(f"{stack.url}/admin/backends", "PUT", spec)
        assert status == 200, answer
    _, before = call(f"{stack.url}/stats")
    for _ in range(n):
        status, _ = call(f"{stack.url}/predict", "POST", {"inputs": [[1.0], [2.0]]}, None)
        assert status == 200
    # each request ends as two rows or as one unpaired request
    after = settle(stack.url, lambda s: (paired := paired_between(before, s)).rows // 2
                   + paired.unpaired >= n)  # fmt: skip
    return paired_between(before, after)


@pytest.mark.slow
def test_mirrored_answers_are_compared_with_the_champions(answering: Stack) -> None:
    n = 200
    same = exchange(answering, n)
    assert same == Paired(label_rows=2 * n, probability_rows=2 * n)
    assert same.label_disagreement_rate == 0.0 and same.mean_probability_diff == 0.0

    flipped = exchange(answering, n, challenger="flipper")  # each 10th answer, both rows
    assert (flipped.label_rows, flipped.label_disagreements, flipped.unpaired) == (2 * n, 40, 0)
    assert flipped.label_disagreement_rate == 0.1
    assert flipped.mean_probability_diff == pytest.approx((0.25 + 0.5) * 20 / (2 * n))

    scores = exchange(answering, n, champion="scorer", challenger="other-scorer")
    assert (scores.score_rows, scores.label_rows, scores.unpaired) == (2 * n, 0, 0)
    assert scores.mean_score_diff == pytest.approx(0.375)

    failing = exchange(answering, n, challenger="failing")
    assert failing == Paired(unpaired=n)
    _, snap = call(f"{answering.url}/stats")
    assert snap["challenger/mirror"]["outcomes"]["error"] == n
    assert snap["champion/live"]["outcomes"] == {"ok": 4 * n}  # the client saw none of it
    with urllib.request.urlopen(f"{answering.url}/metrics") as r:
        text = r.read().decode().splitlines()
    assert f'modelship_gateway_paired_rows_total{{kind="label"}} {4 * n}' in text
    assert f'modelship_gateway_paired_rows_total{{kind="score"}} {2 * n}' in text
    assert "modelship_gateway_paired_disagreements_total 40" in text
    assert f"modelship_gateway_unpaired_total {n}" in text


@pytest.mark.slow
def test_admin_api_needs_the_token_and_sane_weights(stack: Stack) -> None:
    for token in (None, "wrong"):
        status, answer = call(f"{stack.url}/admin/weights", "PUT", {"challenger": 50}, token)
        assert status == 401 and "Bearer" in answer["error"]
    for bad in ({"challenger": 150}, {"challenger": -1}, {"challenger": "half"},
                {"challenger": 10.5}, {"mirror": 2}, {"weight": 5}):  # fmt: skip
        status, answer = call(f"{stack.url}/admin/weights", "PUT", bad)
        assert status == 400, (bad, answer)
        assert answer["error"]
    status, answer = call(f"{stack.url}/admin/weights")
    assert status == 200 and answer["challenger"] == 0  # nothing above took effect


@pytest.mark.slow
def test_metrics_and_stats_count_each_variant(stack: Stack) -> None:
    _, before = call(f"{stack.url}/stats")
    stack.weights(challenger=50)
    for _ in range(100):
        stack.predict()
    _, after = call(f"{stack.url}/stats")
    champion = traffic_between(before, after, "champion")
    challenger = traffic_between(before, after, "challenger")
    assert champion.requests + challenger.requests == 100
    assert champion.errors == challenger.errors == 0
    assert 0 < challenger.p(99) < 1000
    with urllib.request.urlopen(f"{stack.url}/metrics") as r:
        text = r.read().decode()
    assert 'modelship_gateway_requests_total{variant="challenger",mode="live",outcome="ok"}' in text
    assert 'modelship_gateway_weight{variant="challenger"} 50' in text


@pytest.mark.slow
def test_weight_changes_under_load_fail_no_request(stack: Stack) -> None:
    changes = [10, 50, 100, 0, 25, 75, 0]

    def move() -> None:
        for w in changes:
            time.sleep(0.4)
            stack.weights(challenger=w)

    mover = threading.Thread(target=move)
    mover.start()
    result = run(f"{stack.url}/predict", [BODY], [Phase(200, 3.5)], connections=64)
    mover.join()
    assert result.sent >= 650
    assert not result.errors, result.errors


@pytest.mark.slow
def test_a_crashing_challenger_is_ejected_without_client_errors(stack: Stack) -> None:
    stack.weights(challenger=50)
    killer = threading.Timer(1.0, lambda: stack.procs["challenger"].send_signal(signal.SIGKILL))
    killer.start()
    result = run(f"{stack.url}/predict", [BODY], [Phase(200, 3.0)], connections=64)
    killer.join()
    assert not result.errors, result.errors
    _, state = call(f"{stack.url}/admin/weights")
    assert state["backends"]["challenger"]["healthy"] is False
    assert state["effective_challenger"] == 0
    _, snap = call(f"{stack.url}/stats")
    assert stack.procs["challenger"].poll() is not None
    assert snap["challenger/live"]["outcomes"]["ok"] > 50  # it served before it died
    # requests refused or cut off by the crash were answered by the champion instead
    assert snap["retried"]["challenger"] >= 1


@pytest.mark.slow
def test_promote_makes_the_challenger_the_only_backend(stack: Stack) -> None:
    stack.weights(challenger=10)
    status, answer = call(f"{stack.url}/admin/promote", "POST", {})
    assert status == 200 and list(answer["backends"]) == ["champion"]
    assert answer["backends"]["champion"]["version"] == "2"
    assert Counter(stack.predict() for _ in range(20)) == {"challenger": 20}


def test_the_admin_api_refuses_urls_and_weights_no_request_could_use() -> None:
    """Accepted, 'httpfoo' made every request routed there a 500; false was taken as a weight."""

    async def main() -> None:
        config = GatewayConfig("t", Backend("http://127.0.0.1:1"), health_interval_s=60)
        admin = {"authorization": "Bearer t"}
        async with TestClient(TestServer(create_app(config))) as client:
            for url in ("httpfoo", "http:/x", "http://[bad", "http://h:99999", "ftp://h:21", 5):
                spec = {"challenger": {"url": url}}
                async with client.put("/admin/backends", json=spec, headers=admin) as r:
                    assert r.status == 400, url
            for body in ({"challenger": False}, {"mirror": True}, {"mirror": "0.5"}):
                async with client.put("/admin/weights", json=body, headers=admin) as r:
                    assert r.status == 400, body
            async with client.get("/admin/weights", headers=admin) as r:
                state = await r.json()
        assert list(state["backends"]) == ["champion"] and state["challenger"] == 0

    asyncio.run(main())


def test_a_malformed_request_is_one_warning_line_and_a_real_fault_keeps_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from aiohttp.http_exceptions import InvalidHeader

    from modelship.core.clientfaults import one_line

    one_line()
    one_line()  # once is enough: a second call adds nothing
    server = logging.getLogger("aiohttp.server")
    for exc in (InvalidHeader(b"Content-Length"), KeyError("backend")):
        try:
            raise exc
        except Exception as e:
            server.exception("Error handling request from %s", "10.0.0.7", exc_info=e)
    client, fault = caplog.records
    assert client.levelname == "WARNING" and client.exc_info is None
    assert client.getMessage() == (
        "Error handling request from 10.0.0.7: answered 400, the request was at fault: "
        "Invalid HTTP header: b'Content-Length'"
    )
    assert fault.levelname == "ERROR" and fault.exc_info is not None


def test_a_client_that_leaves_before_its_answer_is_one_log_line(tmp_path: Path) -> None:
    import socket

    stack = Stack(tmp_path)
    try:
        stack.start_backend("champion", "--delay", "1")
        stack.start_backend("challenger")
        stack.start_gateway()
        log = tmp_path / "gateway.log"
        offset = log.stat().st_size
        body = b'{"inputs": [[1.0]]}'
        with socket.create_connection(("127.0.0.1", stack.ports["gateway"]), timeout=5) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            time.sleep(0.4)  # the gateway has the whole request and waits on the champion
        deadline = time.monotonic() + 10
        while b"went away" not in log.read_bytes()[offset:] and time.monotonic() < deadline:
            time.sleep(0.1)
        said = [line for line in log.read_text()[offset:].splitlines() if line.strip()]
        assert len(said) == 1, said
        assert "POST /predict: the client went away before its answer (200, champion)" in said[0]
    finally:
        stack.stop()
