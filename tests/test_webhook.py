"""The MLflow webhook receiver: signature, timestamp, replay, payloads, dispatch."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest
from starlette.testclient import TestClient

from modelship.registry.webhook import Delivery, Refused, SeenDeliveries, check, sign
from modelship.registry.webhook_server import GitHubDispatcher, create_app
from tests.support import http_stub

SECRET = "s3cret-value-for-tests"
NOW = 1_800_000_000.0


def _delivery(
    event: str = "model_version.created", secret: str = SECRET, ts: float = NOW, **data: Any
) -> tuple[dict[str, str], bytes]:
    entity, action = event.rsplit(".", 1)
    body = json.dumps(
        {
            "entity": entity,
            "action": action,
            "timestamp": "t",
            "data": {"name": "m", "version": "3", **data},
        }
    ).encode()
    delivery_id = str(uuid.uuid4())
    headers = {
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": str(int(ts)),
        "X-MLflow-Signature": sign(secret, delivery_id, str(int(ts)), body),
        "Content-Type": "application/json",
    }
    return headers, body


def test_a_signed_fresh_delivery_is_accepted() -> None:
    headers, body = _delivery()
    got = check(headers, body, secret=SECRET, now=NOW + 5)
    assert (got.event, got.model, got.version) == ("model_version.created", "m", "3")


@pytest.mark.parametrize(
    ("tamper", "status", "words"),
    [
        (
            lambda h, b: ({k: v for k, v in h.items() if k != "X-MLflow-Signature"}, b),
            401,
            "missing",
        ),
        (lambda h, b: (h, b.replace(b'"3"', b'"4"')), 401, "signature does not match"),
        (
            lambda h, b: ({**h, "X-MLflow-Timestamp": str(int(NOW) + 1)}, b),
            401,
            "signature does not match",
        ),
        (lambda h, b: (h, b + b" " * 70000), 413, "over the limit"),
    ],
)
def test_bad_deliveries_are_refused(tamper: Any, status: int, words: str) -> None:
    headers, body = tamper(*_delivery())
    with pytest.raises(Refused) as refused:
        check(headers, body, secret=SECRET, now=NOW)
    assert refused.value.status == status and words in refused.value.reason


@pytest.mark.parametrize("delivery_id", ["../../etc/passwd", "a b", "x" * 129, "-rf"])
def test_a_delivery_id_that_could_name_another_file_is_refused(delivery_id: str) -> None:
    # it names the deployment's log file and the audit trail's actor: even signed, only an id
    headers, body = _delivery()
    headers["X-MLflow-Delivery-Id"] = delivery_id
    headers["X-MLflow-Signature"] = sign(SECRET, delivery_id, str(int(NOW)), body)
    with pytest.raises(Refused) as refused:
        check(headers, body, secret=SECRET, now=NOW)
    assert refused.value.status == 400 and "delivery id" in refused.value.reason


@pytest.mark.parametrize(
    ("data", "words"),
    [({"name": "--policy=x.yaml"}, "starts with '-'"), ({"name": "a/b"}, "'/' or ':'"),
     ({"version": "3; rm -rf /"}, "not a model version"), ({"version": "0"}, "not a model version"),
     ({"name": "m\nx"}, "control characters")],
)  # fmt: skip
def test_names_and_versions_are_checked_before_they_become_arguments(
    data: dict[str, Any], words: str
) -> None:
    headers, body = _delivery(**data)
    with pytest.raises(Refused) as refused:
        check(headers, body, secret=SECRET, now=NOW)
    assert refused.value.status == 400 and words in refused.value.reason


def test_wrong_secret_and_stale_timestamp_are_refused() -> None:
    headers, body = _delivery(secret="not-the-secret")
    with pytest.raises(Refused, match="signature does not match"):
        check(headers, body, secret=SECRET, now=NOW)
    headers, body = _delivery(ts=NOW - 3600)
    with pytest.raises(Refused, match="replay") as stale:
        check(headers, body, secret=SECRET, now=NOW)
    assert stale.value.status == 401


def test_malformed_and_unknown_events_are_refused() -> None:
    body = b"{not json"
    headers = {
        "X-MLflow-Delivery-Id": "d",
        "X-MLflow-Timestamp": str(int(NOW)),
        "X-MLflow-Signature": sign(SECRET, "d", str(int(NOW)), body),
    }
    with pytest.raises(Refused) as malformed:
        check(headers, body, secret=SECRET, now=NOW)
    assert malformed.value.status == 400
    headers, body = _delivery(event="registered_model.created")
    with pytest.raises(Refused) as unknown:
        check(headers, body, secret=SECRET, now=NOW)
    assert unknown.value.status == 422


class _Recorder:
    def __init__(self) -> None:
        self.started: list[Delivery] = []

    def start(self, delivery: Delivery) -> str:
        self.started.append(delivery)
        return f"recorded {delivery.model} v{delivery.version}"


@pytest.fixture()
def app(tmp_path: Path) -> tuple[TestClient, _Recorder]:
    recorder = _Recorder()
    client = TestClient(
        create_app(SECRET, SeenDeliveries(tmp_path / "seen.txt"), recorder, clock=lambda: NOW)
    )
    return client, recorder


def test_server_starts_once_per_delivery_and_refuses_replays(
    app: tuple[TestClient, _Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    client, recorder = app
    caplog.set_level(logging.INFO, logger="modelship.webhook")
    headers, body = _delivery()
    first = client.post("/webhooks/mlflow", content=body, headers=headers)
    assert first.status_code == 202 and first.json()["version"] == "3"
    replay = client.post("/webhooks/mlflow", content=body, headers=headers)
    assert replay.status_code == 409
    assert len(recorder.started) == 1
    assert SECRET not in caplog.text and headers["X-MLflow-Signature"] not in caplog.text


def test_server_acts_on_challenger_not_on_champion(app: tuple[TestClient, _Recorder]) -> None:
    client, recorder = app
    headers, body = _delivery(event="model_version_alias.created", alias="champion")
    assert client.post("/webhooks/mlflow", content=body, headers=headers).status_code == 202
    assert recorder.started == []
    headers, body = _delivery(event="model_version_alias.created", alias="challenger")
    assert client.post("/webhooks/mlflow", content=body, headers=headers).status_code == 202
    assert [d.alias for d in recorder.started] == ["challenger"]


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda h, b: ({**h, "X-MLflow-Signature": "v1,AAAA"}, b), 401),
        (lambda h, b: (h, b"x" * 70000), 413),
        (lambda h, b: ({}, b), 401),
    ],
)
def test_server_refuses_bad_input_and_starts_nothing(
    app: tuple[TestClient, _Recorder], mutate: Any, status: int
) -> None:
    client, recorder = app
    headers, body = mutate(*_delivery())
    assert client.post("/webhooks/mlflow", content=body, headers=headers).status_code == status
    assert recorder.started == []


def test_seen_deliveries_survive_a_restart(tmp_path: Path) -> None:
    seen = SeenDeliveries(tmp_path / "seen.txt")
    seen.add("abc")
    assert "abc" in SeenDeliveries(tmp_path / "seen.txt")


def test_seen_deliveries_expire_after_the_replay_window_and_are_bounded(tmp_path: Path) -> None:
    """A delivery older than the replay limit is refused by its timestamp anyway: its id need
    not be kept, so the store stays small however long the receiver runs."""
    now = [1000.0]
    path = tmp_path / "seen.txt"
    seen = SeenDeliveries(path, window_s=300, keep=50, clock=lambda: now[0])
    seen.add("old")
    now[0] += 601  # past twice the window
    seen.add("new")
    assert "old" not in seen and "new" in seen
    restarted = SeenDeliveries(path, window_s=300, keep=50, clock=lambda: now[0])
    assert "old" not in restarted and "new" in restarted
    assert path.read_text().split()[0] == "new"  # rewritten without the expired entry
    for i in range(200):  # a flood within one window: only the newest `keep` stay
        now[0] += 0.01
        seen.add(f"flood-{i}")
    assert len(seen) == 50 and "flood-199" in seen and "flood-0" not in seen
    assert len(SeenDeliveries(path, window_s=300, keep=50, clock=lambda: now[0])) == 50


class _GitHubApi(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, dict[str, str], dict[str, Any]]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append((self.path, dict(self.headers), body))
        self.send_response(204)
        self.end_headers()


@pytest.fixture()
def github_api() -> Iterator[str]:
    _GitHubApi.received = []
    with http_stub(_GitHubApi) as url:
        yield url


def test_github_dispatch_sends_repository_dispatch(
    github_api: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A stand-in for api.github.com, which these machines cannot reach."""
    caplog.set_level(logging.DEBUG)
    token = "ghp_testtoken_never_logged"
    dispatcher = GitHubDispatcher("acme/models", token, github_api)
    said = dispatcher.start(Delivery("d1", "model_version.created", "m", "7"))
    (path, headers, body) = _GitHubApi.received[0]
    assert path == "/repos/acme/models/dispatches" and "HTTP 204" in said
    assert headers["Authorization"] == f"Bearer {token}"
    assert body == {
        "event_type": "model-registered",
        "client_payload": {"model": "m", "version": "7", "alias": ""},
    }
    assert token not in caplog.text and token not in repr(dispatcher) and token not in said
