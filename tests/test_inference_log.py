"""The inference log's writer: nothing lost on close, odd records skipped and counted."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from modelship.bentos.inference_log import Exchange, InferenceLog, read

COLUMNS = ["a", "b"]


def _exchange(i: int, rows: int = 1) -> Exchange:
    inputs = [{"a": float(i), "b": float(r)} for r in range(rows)]
    outputs = [{"prediction": i % 2, "probabilities": [0.25, 0.75]} for _ in range(rows)]
    return Exchange(f"req-{i}", 1_800_000_000.0 + i, json.dumps({"inputs": inputs}).encode(),
                    json.dumps(outputs).encode())  # fmt: skip


def test_appends_from_many_threads_are_all_written_on_close(tmp_path: Path) -> None:
    log = InferenceLog(str(tmp_path), COLUMNS, "3", flush_rows=50, flush_interval_s=60)

    def send(k: int) -> None:
        for i in range(100):
            log.append(_exchange(k * 100 + i, rows=2))

    threads = [threading.Thread(target=send, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    table = read(str(tmp_path))
    assert table.num_rows == 8 * 100 * 2 == log.written_rows
    assert len(set(table.column("request_id").to_pylist())) == 800
    assert set(table.column("model_version").to_pylist()) == {"3"}
    assert table.column_names[:2] == COLUMNS
    assert log.written_files >= 800 * 2 // 50
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"


def test_a_quiet_service_still_flushes_on_time(tmp_path: Path) -> None:
    log = InferenceLog(str(tmp_path), COLUMNS, "1", flush_rows=1000, flush_interval_s=0.2)
    log.append(_exchange(1))
    deadline = threading.Event()
    for _ in range(50):
        if log.written_rows:
            break
        deadline.wait(0.05)
    assert log.written_rows == 1, "one row waited for a batch that never fills"
    log.close()


def test_corrupt_exchanges_are_skipped_and_counted(tmp_path: Path) -> None:
    log = InferenceLog(str(tmp_path), COLUMNS, "1", flush_rows=10, flush_interval_s=60)
    log.append(_exchange(1))
    log.append(Exchange("bad-json", 0.0, b"{not json", b"[]"))
    log.append(Exchange("mismatch", 0.0, _exchange(2, rows=2).request, b"[]"))
    log.append(_exchange(3))
    log.close()
    assert (log.written_rows, log.skipped) == (2, 2)
    assert read(str(tmp_path)).column("request_id").to_pylist() == ["req-1", "req-3"]


def test_feature_names_that_clash_with_the_log_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="clash"):
        InferenceLog(str(tmp_path), ["a", "prediction"], "1")


def test_rows_the_fast_path_parsed_are_logged_without_parsing_again(tmp_path: Path) -> None:
    import numpy as np

    log = InferenceLog(str(tmp_path), COLUMNS, "2", flush_rows=100, flush_interval_s=60)
    rows = np.array([[1.5, 2.5], [3.5, 4.5]], np.float32)
    outputs = [
        {"prediction": 1, "probabilities": [0.2, 0.8]},
        {"prediction": 0, "probabilities": [0.9, 0.1]},
    ]
    log.append(Exchange("fast-1", 1_800_000_000.0, rows=rows, outputs=outputs))
    log.append(_exchange(7))  # and bytes from BentoML's path, in the same file
    log.close()
    table = read(str(tmp_path)).to_pandas()
    assert table["request_id"].tolist() == ["fast-1", "fast-1", "req-7"]
    assert table["a"].tolist() == [1.5, 3.5, 7.0] and table["row"].tolist() == [0, 1, 0]
    assert table["prediction"].tolist() == [1, 0, 1]


def test_readers_after_a_time_skip_parts_written_before_it(tmp_path: Path) -> None:
    import os
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq

    from modelship.bentos.inference_log import parts

    now = time.time()
    for name, written in (("part-old.parquet", now - 3600), ("part-new.parquet", now)):
        stamp = int(written * 1e6)
        pq.write_table(pa.table({"timestamp": pa.array([stamp], pa.timestamp("us", tz="UTC"))}),
                       tmp_path / name)  # fmt: skip
        os.utime(tmp_path / name, (written, written))
    everything = [i.base_name for i in parts(str(tmp_path))[1]]
    assert everything == ["part-new.parquet", "part-old.parquet"]
    after = int((now - 600) * 1e6)
    assert [i.base_name for i in parts(str(tmp_path), after)[1]] == ["part-new.parquet"]
    assert read(str(tmp_path), after).num_rows == 1 and read(str(tmp_path)).num_rows == 2
    # within a minute of the cut, a part is read anyway: clocks may disagree
    close = int((now - 3600 + 30) * 1e6)
    assert len(parts(str(tmp_path), close)[1]) == 2
