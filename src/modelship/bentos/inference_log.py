"""The inference log: every request and its answer, appended in batches off the hot path.

The request path only puts an :class:`Exchange` on a queue: the rows the model saw and its
answers where the fast path already has them parsed, else the exact request and response bytes,
which the writer thread parses. The writer keeps one row per predicted row (features by
signature name, the prediction, the model version, the time and the request id), columnar, and
writes Parquet files of ``flush_rows`` rows, or whatever arrived within ``flush_interval_s``. Each file appears whole
(written under a temporary name, then renamed), so the drift monitor never reads half a file.
:meth:`InferenceLog.close` (called on shutdown, SIGTERM included) writes what is left.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .payload import to_matrix

log = logging.getLogger("bentoml.modelship.inference_log")

#: columns the log adds beside the model's own features
META_COLUMNS = ("request_id", "row", "timestamp", "model_version", "prediction", "probabilities")
_QUEUE_LIMIT = 200_000
_STOP = object()


@dataclass(frozen=True)
class Exchange:
    """One answered request, as the request path hands it over."""

    request_id: str
    timestamp: float
    request: bytes = b""
    response: bytes = b""
    #: what the fast path already parsed: the float32 rows the model saw, and its answers
    rows: np.ndarray | None = None
    outputs: list[dict[str, Any]] | None = None


class _Pending:
    """Rows waiting for the next file, kept as columns."""

    def __init__(self) -> None:
        self.features: list[np.ndarray] = []
        self.request_ids: list[str] = []
        self.row: list[int] = []
        self.timestamp_us: list[int] = []
        self.prediction: list[Any] = []
        self.probabilities: list[Any] = []
        self.count = 0

    def add(self, ex: Exchange, rows: np.ndarray, outputs: list[dict[str, Any]]) -> None:
        n = len(rows)
        self.features.append(rows)
        self.request_ids.extend([ex.request_id] * n)
        self.row.extend(range(n))
        self.timestamp_us.extend([int(ex.timestamp * 1e6)] * n)
        self.prediction.extend(o.get("prediction") for o in outputs)
        self.probabilities.extend(o.get("probabilities") for o in outputs)
        self.count += n

    def table(self, columns: Sequence[str], model_version: str) -> pa.Table:
        features = np.concatenate(self.features).astype(np.float32, copy=False)
        data: dict[str, Any] = {c: features[:, j] for j, c in enumerate(columns)}
        data.update(
            request_id=pa.array(self.request_ids, pa.string()),
            row=pa.array(self.row, pa.int32()),
            timestamp=pa.array(self.timestamp_us, pa.timestamp("us", tz="UTC")),
            model_version=pa.array([model_version] * self.count, pa.string()),
            prediction=pa.array(self.prediction),
        )  # fmt: skip
        if any(p is not None for p in self.probabilities):
            data["probabilities"] = pa.array(self.probabilities, pa.list_(pa.float32()))
        return pa.table(data)


class InferenceLog:
    def __init__(
        self,
        uri: str,
        columns: Sequence[str],
        model_version: str,
        *,
        flush_rows: int = 1000,
        flush_interval_s: float = 1.0,
    ) -> None:
        clash = set(columns) & set(META_COLUMNS)
        if clash:
            raise ValueError(f"feature names {sorted(clash)} clash with the log's own columns")
        self.fs, self.root = filesystem(uri)
        self.fs.create_dir(self.root, recursive=True)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.columns = list(columns)
        self.model_version = model_version
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.written_rows = 0
        self.written_files = 0
        self.skipped = 0
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_LIMIT)
        self._seq = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def append(self, exchange: Exchange) -> None:
        """Hand one exchange to the writer; never blocks the request path."""
        try:
            self._queue.put_nowait(exchange)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout_s: float = 30.0) -> None:
        """Write everything queued so far and stop the writer."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    # -- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        pending = _Pending()
        first = time.monotonic()
        while True:
            wait = max(0.0, self.flush_interval_s - (time.monotonic() - first))
            try:
                item = self._queue.get(timeout=wait if pending.count else None)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._flush(pending)
                return
            if item is not None:
                if not pending.count:
                    first = time.monotonic()
                self._add(pending, item)
            due = pending.count and time.monotonic() - first >= self.flush_interval_s
            if pending.count >= self.flush_rows or due:
                self._flush(pending)
                pending = _Pending()

    def _add(self, pending: _Pending, ex: Exchange) -> None:
        try:
            if ex.rows is not None and ex.outputs is not None:
                rows, outputs = ex.rows, ex.outputs
            else:
                rows = to_matrix(json.loads(ex.request)["inputs"], self.columns, max_rows=2**31)
                outputs = json.loads(ex.response)
            if len(outputs) != len(rows):
                raise ValueError(f"{len(rows)} rows but {len(outputs)} predictions")
        except Exception as e:  # never let one odd exchange stop the log
            self.skipped += 1
            log.warning("inference log: skipped request %s: %s", ex.request_id, e)
            return
        pending.add(ex, rows, outputs)

    def _flush(self, pending: _Pending) -> None:
        if not pending.count:
            return
        table = pending.table(self.columns, self.model_version)
        self._seq += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        name = f"part-{stamp}-{os.getpid()}-{self._seq:05d}.parquet"
        final = f"{self.root}/{name}"
        try:
            if self.local:  # appear whole: the monitor may list the folder at any moment
                tmp = f"{self.root}/.{name}.tmp"
                pq.write_table(table, tmp, filesystem=self.fs)
                self.fs.move(tmp, final)
            else:  # an object store's put is already all-or-nothing
                pq.write_table(table, final, filesystem=self.fs)
        except Exception as e:
            self.skipped += pending.count
            log.error("inference log: could not write %d rows to %s: %s", pending.count, final, e)
            return
        self.written_rows += pending.count
        self.written_files += 1


#: clocks of a writer and a store may disagree: parts this close to the cut are read anyway
_CLOCK_SLACK_US = 60_000_000


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for ``uri`` and the path in it. An ``s3://`` URI goes to the
    endpoint in ``AWS_ENDPOINT_URL`` (pyarrow reads it) or, where only MLflow's
    ``MLFLOW_S3_ENDPOINT_URL`` is set (a pipeline pod's settings), to that one."""
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    if uri.startswith("s3://") and endpoint and not os.environ.get("AWS_ENDPOINT_URL"):
        scheme, _, host = endpoint.partition("://")
        fs = pafs.S3FileSystem(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
        return fs, uri.removeprefix("s3://").rstrip("/")
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, str(path)


def parts(uri: str, after_us: int = 0) -> tuple[pafs.FileSystem, list[pafs.FileInfo]]:
    """The Parquet parts under ``uri`` (a version's folder), oldest first. With ``after_us``
    (UTC µs), parts last written before it are left out: a part is written after every row in
    it, so a reader that only wants newer rows need not open the whole history each time."""
    fs, root = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    found = [i for i in infos if i.base_name.startswith("part-")]
    if after_us:
        cut = after_us - _CLOCK_SLACK_US
        found = [i for i in found if i.mtime_ns is None or i.mtime_ns // 1000 > cut]
    return fs, sorted(found, key=lambda i: i.path)


def read(uri: str, after_us: int = 0) -> pa.Table:
    """The rows logged under ``uri``, oldest file first; with ``after_us``, at least every row
    logged after it (rows of a part that straddles the cut come too)."""
    fs, found = parts(uri, after_us)
    files = [i.path for i in found]
    if not files:
        return pa.table({})
    return pa.concat_tables(
        [pq.read_table(f, filesystem=fs) for f in files], promote_options="default"
    )
