"""The champion's inference log, cut into windows after the monitor's cursor.

Each Parquet part is read on its own: a part that cannot be read, or rows whose features are
missing or not finite, are skipped and counted, never fatal. Windows are ``rows`` rows, or the
rows of ``minutes``; the rows after the last whole window wait for the next run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from modelship.policies.schema import Window

#: kept beside the features: the answer, and what joins late labels to it
_KEPT = ("prediction", "request_id", "row", "_us")


@dataclass
class LogRead:
    rows: pd.DataFrame
    bad_files: list[str] = field(default_factory=list)
    bad_rows: int = 0


def read_log(uri: str, columns: list[str], after_us: int) -> LogRead:
    """Rows logged after ``after_us`` (UTC µs) with the features and the prediction."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from modelship.bentos.inference_log import parts

    fs, found = parts(uri, after_us)
    frames, bad = [], []
    for info in found:
        try:
            table = pq.read_table(info.path, filesystem=fs)
            stamps = table.column("timestamp").cast(pa.timestamp("us", tz="UTC"))
            frame = table.drop_columns(["timestamp"]).to_pandas()
            frame["_us"] = stamps.cast(pa.int64()).to_numpy()
        except Exception as e:  # a torn or foreign file: skipped, counted, reported
            bad.append(f"{info.base_name}: {type(e).__name__}")
            continue
        frames.append(frame[frame["_us"] > after_us])
    if not frames:
        return LogRead(pd.DataFrame(columns=[*columns, *_KEPT]), bad)
    rows = pd.concat(frames, ignore_index=True).sort_values("_us", kind="stable")
    missing = [c for c in columns if c not in rows]
    if missing:
        # a log written for other features cannot be judged against this reference
        raise ValueError(f"the inference log has no column(s) {missing}")
    features = rows[columns].apply(pd.to_numeric, errors="coerce")
    good = np.isfinite(features.to_numpy(dtype=float)).all(axis=1)
    for name in ("request_id", "row"):
        if name not in rows:
            rows[name] = None
    kept = rows.loc[good, [*columns, *_KEPT]].reset_index(drop=True)
    return LogRead(kept, bad, int((~good).sum()))


#: a window: first and last time it covers (UTC µs), and its rows
Cut = tuple[int, int, pd.DataFrame]


def windows(rows: pd.DataFrame, size: Window) -> list[Cut]:
    """Whole windows, oldest first; what is left over is not a window yet. A time window with
    no rows in it is still a window (an empty one: inconclusive)."""
    stamps = rows["_us"]
    if size.rows is not None:
        n = len(rows) // size.rows
        pieces = [rows.iloc[i * size.rows : (i + 1) * size.rows] for i in range(n)]
        return [(int(p["_us"].iloc[0]), int(p["_us"].iloc[-1]), p) for p in pieces]
    assert size.minutes is not None
    if rows.empty:
        return []
    span = int(size.minutes * 60e6)
    start, last = int(stamps.iloc[0]), int(stamps.iloc[-1])
    out = []
    while start + span <= last:
        inside = (stamps >= start) & (stamps < start + span)
        out.append((start, start + span - 1, rows[inside]))
        start += span
    return out
