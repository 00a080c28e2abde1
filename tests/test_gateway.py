"""The traffic gateway against real processes: two stand-in servers behind `python -m modelship.gateway`."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelship.components.serving.loadgen import Phase, run
from modelship.gateway.routing import Variant, bucket, choose, effective_weight
from modelship.gateway.stats import traffic_between
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


@pytest.mark.slow
def test_mirror_copies_to_the_challenger_and_discards_its_answers(stack: Stack) -> None:
    stack.weights(challenger=0, mirror=1.0)
    assert Counter(stack.predict() for _ in range(50)) == {"champion": 50}
    time.sleep(0.3)  # mirrored copies finish after the answers
    _, snap = call(f"{stack.url}/stats")
    assert snap["challenger/mirror"]["outcomes"]["ok"] == 50
    assert "challenger/live" not in snap


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
