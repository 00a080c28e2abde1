"""The champion's served traffic on Seldon Core v2: the Kafka topics Seldon writes.

Seldon records every request and answer of a model that serves in a Pipeline in the topics
``<prefix>.<namespace>.model.<model>.inputs`` and ``.outputs`` (prefix ``seldon`` unless its
``topicPrefix`` says otherwise), each message an Open Inference Protocol protobuf
(scheduler/pkg/kafka/topics.go and gateway/worker.go in Seldon Core 2.8/2.9). This reader turns
them into the same rows the Bento's inference log gives (features by the model's columns, the
prediction, a request id, the time), so windows, drift and quality are judged the same way.

Each pass reads every partition from the start to the end it finds, by assignment (no consumer
group, nothing committed: the monitor's cursor is the time of the last row it judged, kept in
MLflow as for the inference log); rows at or before the cursor are dropped. An answer is joined
to its request by the message key, else the protocol's ``id``; a message that cannot be decoded
is skipped and counted, never fatal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from modelship.components.monitor.window import LogRead
from modelship.components.serving import oip
from modelship.components.serving.seldon_kafka import (
    join_key,
    prediction_of,
    read,
    request_id,
    topics,
)


def read_topics(
    bootstrap: str, prefix: str, namespace: str, model: str, columns: list[str], after_us: int,
    *, timeout_s: float = 60.0,
) -> LogRead:  # fmt: skip
    """Rows Seldon recorded for ``model`` after ``after_us`` (UTC µs), as :func:`read_log`."""
    inputs_topic, outputs_topic = topics(prefix, namespace, model)
    requests, answers = read(bootstrap, [inputs_topic, outputs_topic], timeout_s)
    bad: list[str] = []
    predictions: dict[str, np.ndarray] = {}
    for message in answers:
        try:
            parsed = oip.parse_response(bytes(message.value))
            found = prediction_of(oip.tensors(parsed))
            if found is not None:
                predictions[join_key(message, parsed)] = found
        except Exception as e:  # a foreign or torn message: skipped, counted
            bad.append(f"{outputs_topic}/{message.partition}@{message.offset}: {type(e).__name__}")
    frames = []
    for message in requests:
        stamp_us = int(message.timestamp) * 1000
        if stamp_us <= after_us:
            continue
        try:
            parsed = oip.parse_request(bytes(message.value))
            (matrix,) = oip.tensors(parsed).values()
            matrix = np.asarray(matrix, dtype=float).reshape(len(matrix), -1)
            if matrix.shape[1] != len(columns):
                raise ValueError(f"{matrix.shape[1]} features, the model has {len(columns)}")
        except Exception as e:
            bad.append(f"{inputs_topic}/{message.partition}@{message.offset}: {type(e).__name__}")
            continue
        key = join_key(message, parsed)
        frame = pd.DataFrame(matrix, columns=columns)
        answer = predictions.get(key)
        frame["prediction"] = answer if answer is not None and len(answer) == len(frame) else None
        frame["request_id"] = request_id(message, key)
        frame["row"], frame["_us"] = range(len(frame)), stamp_us
        frames.append(frame)
    if not frames:
        return LogRead(pd.DataFrame(columns=[*columns, "prediction", "request_id", "row", "_us"]),
                       bad)  # fmt: skip
    rows = pd.concat(frames, ignore_index=True).sort_values("_us", kind="stable")
    good = np.isfinite(rows[columns].to_numpy(dtype=float)).all(axis=1)
    return LogRead(rows.loc[good].reset_index(drop=True), bad, int((~good).sum()))
