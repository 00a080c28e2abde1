"""Seldon Core v2's record of served traffic in Kafka: topics, reading, and the answers.

Seldon writes every request and answer of a model served in a Pipeline to
``<prefix>.<namespace>.model.<model>.inputs`` and ``.outputs`` (scheduler/pkg/kafka/topics.go,
Seldon Core 2.8/2.9), each an Open Inference Protocol protobuf. The drift monitor reads the
requests (``monitor/kafka_log.py``); a canary on Seldon compares the two versions' answers.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from modelship.components.serving import oip

#: the answer that is the prediction: the class label, else a regressor's value
PREDICTION_OUTPUTS = ("label", "variable", "predict", "output")


def topics(prefix: str, namespace: str, model: str) -> tuple[str, str]:
    base = f"{prefix}.{namespace}.model.{model}"
    return f"{base}.inputs", f"{base}.outputs"


def drain(consumer: Any, topic: str, timeout_s: float) -> list[Any]:
    """Every message of ``topic`` from its start to the end offsets seen now."""
    from kafka import TopicPartition

    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        return []
    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    consumer.seek_to_beginning(*assigned)
    ends = consumer.end_offsets(assigned)
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while any(consumer.position(tp) < ends[tp] for tp in assigned):
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {topic} took over {timeout_s:.0f} s")
        for batch in consumer.poll(timeout_ms=500).values():
            messages.extend(batch)
    return messages


def join_key(message: Any, parsed: Any) -> str:
    """What joins a request to its answer: the message key (Seldon 2.8/2.9 key both with
    ``<pipeline>.<request id>``), else the protocol's ``id``, else the message's place."""
    if message.key:
        return bytes(message.key).decode(errors="replace")
    if parsed.id:
        return str(parsed.id)
    return f"{message.partition}-{message.offset}"


def request_id(message: Any, key: str) -> str:
    """The request's id, as labels name it: Seldon's ``x-request-id`` header, else the last
    part of a composite key."""
    for name, value in message.headers or []:
        if str(name).lower() == "x-request-id" and value:
            return bytes(value).decode(errors="replace")
    return key.rsplit(".", 1)[-1]


def read(bootstrap: str, names: list[str], timeout_s: float) -> list[list[Any]]:
    """Each topic's messages, start to end, with one consumer that commits nothing."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             group_id=None, request_timeout_ms=30_000)  # fmt: skip
    try:
        return [drain(consumer, name, timeout_s) for name in names]
    finally:
        consumer.close()


def prediction_of(out: dict[str, np.ndarray]) -> np.ndarray | None:
    """The answer's predictions, one per row: its label, else a regressor's value."""
    name = next((n for n in PREDICTION_OUTPUTS if n in out), next(iter(out), None))
    return None if name is None else out[name].reshape(-1)


def answers(bootstrap: str, prefix: str, namespace: str, model: str, after_us: int = 0,
            timeout_s: float = 60.0) -> pd.DataFrame:  # fmt: skip
    """``model``'s predictions Seldon recorded after ``after_us``: one row per predicted row
    (``prediction``, ``_us``); an answer that cannot be decoded is left out."""
    _, outputs_topic = topics(prefix, namespace, model)
    (messages,) = read(bootstrap, [outputs_topic], timeout_s)
    frames = []
    for message in messages:
        stamp_us = int(message.timestamp) * 1000
        if stamp_us <= after_us:
            continue
        try:
            out = oip.tensors(oip.parse_response(bytes(message.value)))
        except Exception:  # a foreign or torn message says nothing about the version
            continue
        found = prediction_of(out)
        if found is not None:
            frames.append(pd.DataFrame({"prediction": found, "_us": stamp_us}))
    if not frames:
        return pd.DataFrame({"prediction": [], "_us": []})
    return pd.concat(frames, ignore_index=True)
