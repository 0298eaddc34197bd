"""Reading and writing corpora in the Numenta Anomaly Benchmark (NAB) layout.

A corpus directory holds ``data/<category>/<name>.csv`` (columns
``timestamp,value``) and ``labels/combined_windows.json`` mapping
``"<category>/<name>.csv"`` to a list of ``[start, end]`` anomaly windows.
A data file with no entry in the labels file has no windows; label entries
without a data file are ignored.

Results of a detector run called ``label`` live under
``<out>/<label>/<category>/<label>_<name>.csv`` with columns
``timestamp,value,anomaly_score`` (score in [0, 1]).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from eyenet.core.data import Series, _read_csv_frame, read_csv
from eyenet.core.errors import InvalidInputError

__all__ = [
    "CorpusFile",
    "LABELS_FILE",
    "TIMESTAMP_FORMAT",
    "read_corpus",
    "load_file",
    "probation_length",
    "window_rows",
    "result_path",
    "write_result",
    "read_result",
]

LABELS_FILE = "labels/combined_windows.json"
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
RESULT_COLUMNS = ("timestamp", "value", "anomaly_score")

Window = tuple[pd.Timestamp, pd.Timestamp]


@dataclass(frozen=True)
class CorpusFile:
    """One data file of a corpus and its labelled anomaly windows (sorted by start)."""

    key: str  # "<category>/<name>.csv", the key used in the labels file
    category: str
    name: str  # file stem
    path: Path
    windows: list[Window] = field(default_factory=list)


def _parse_window_time(value: Any, *, where: str) -> pd.Timestamp:
    if not isinstance(value, str):
        raise InvalidInputError(f"{where}: expected a timestamp string, got {value!r}")
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInputError(f"{where}: unparseable timestamp {value!r}") from None
    if ts is pd.NaT or pd.isna(ts):
        raise InvalidInputError(f"{where}: unparseable timestamp {value!r}")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.as_unit("ns")


def _read_labels(path: Path) -> dict[str, list[Window]]:
    if not path.is_file():
        raise InvalidInputError(f"labels file {path} not found (expected {LABELS_FILE} in the corpus)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{path}: expected an object mapping file keys to window lists")
    labels: dict[str, list[Window]] = {}
    for key, wins in raw.items():
        if not isinstance(wins, list):
            raise InvalidInputError(f"{path}: entry {key!r}: expected a list of [start, end] pairs")
        parsed: list[Window] = []
        for j, pair in enumerate(wins):
            where = f"{path}: entry {key!r}, window {j}"
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise InvalidInputError(f"{where}: expected [start, end], got {pair!r}")
            start = _parse_window_time(pair[0], where=where)
            end = _parse_window_time(pair[1], where=where)
            if end < start:
                raise InvalidInputError(f"{where}: end {end} is before start {start}")
            parsed.append((start, end))
        parsed.sort(key=lambda w: w[0])
        for j in range(1, len(parsed)):
            if parsed[j][0] <= parsed[j - 1][1]:
                raise InvalidInputError(
                    f"{path}: entry {key!r}: windows overlap ({parsed[j - 1][0]}..{parsed[j - 1][1]}"
                    f" and {parsed[j][0]}..{parsed[j][1]})"
                )
        labels[str(key).replace("\\", "/")] = parsed
    return labels


def read_corpus(root: str | Path) -> list[CorpusFile]:
    """Every ``data/<category>/*.csv`` under ``root`` with its windows, sorted by key."""
    root = Path(root)
    data_dir = root / "data"
    if not data_dir.is_dir():
        raise InvalidInputError(f"corpus {root}: data directory {data_dir} not found")
    labels = _read_labels(root / LABELS_FILE)
    files: list[CorpusFile] = []
    for category_dir in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        for path in sorted(category_dir.glob("*.csv")):
            if not path.is_file():
                continue
            key = f"{category_dir.name}/{path.name}"
            files.append(
                CorpusFile(
                    key=key,
                    category=category_dir.name,
                    name=path.stem,
                    path=path,
                    windows=list(labels.get(key, [])),
                )
            )
    files.sort(key=lambda cf: cf.key)
    if not files:
        raise InvalidInputError(f"corpus {root}: no CSV files under {data_dir}/<category>/")
    return files


def load_file(cf: CorpusFile) -> Series:
    """The series of a corpus file, rows exactly as recorded.

    Values must be finite, but timestamps may repeat or step back: the NAB
    data contains clock changes (e.g. a repeated hour), and a result file
    must have one row per data row in the same order.
    """
    return read_csv(cf.path, require_increasing=False)


def probation_length(n: int, fraction: float = 0.15, cap: int = 750) -> int:
    """Rows at the start of a file that are not scored: ``min(floor(fraction * n), cap)``."""
    if n < 0:
        raise InvalidInputError(f"probation_length: row count must be >= 0, got {n}")
    if not (0.0 <= fraction <= 1.0):
        raise InvalidInputError(f"probation_length: fraction must be in [0, 1], got {fraction}")
    return int(min(math.floor(fraction * n), cap))


def _as_ns(ts: Any) -> np.datetime64:
    t = pd.Timestamp(ts)
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    return t.as_unit("ns").to_datetime64()


def window_rows(timestamps: np.ndarray, windows: Sequence[tuple[Any, Any]]) -> list[tuple[int, int]]:
    """Map time windows to inclusive row ranges ``(a, b)``.

    A row belongs to a window when ``start <= timestamp <= end``; ``a`` is the
    first such row and ``b`` the last (for increasing timestamps: the first
    row at or after the start and the last row at or before the end). A
    window that contains no row, or whose rows are not contiguous (possible
    only when timestamps step back), is an error.
    """
    ts = np.asarray(timestamps).astype("datetime64[ns]")
    out: list[tuple[int, int]] = []
    for start, end in windows:
        s, e = _as_ns(start), _as_ns(end)
        rows = np.flatnonzero((ts >= s) & (ts <= e))
        span = f"window {pd.Timestamp(s)}..{pd.Timestamp(e)}"
        if len(rows) == 0:
            first = pd.Timestamp(ts[0]) if len(ts) else "-"
            last = pd.Timestamp(ts[-1]) if len(ts) else "-"
            raise InvalidInputError(f"{span} contains no row of the series ({len(ts)} rows, {first}..{last})")
        a, b = int(rows[0]), int(rows[-1])
        if b - a + 1 != len(rows):
            raise InvalidInputError(f"{span}: its rows {a}..{b} are interrupted by rows outside it (timestamps step back)")
        out.append((a, b))
    return out


def result_path(out: str | Path, label: str, cf: CorpusFile) -> Path:
    """``out/<label>/<category>/<label>_<name>.csv``."""
    if not label or "/" in label or "\\" in label or label in (".", ".."):
        raise InvalidInputError(f"invalid result label {label!r}: must be a non-empty name without path separators")
    return Path(out) / label / cf.category / f"{label}_{cf.name}.csv"


def _check_scores(scores: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(scores)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(f"{where}: {int(bad.sum())} non-finite anomaly_score value(s), first at row {i}")
    out = (scores < 0.0) | (scores > 1.0)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise InvalidInputError(
            f"{where}: {int(out.sum())} anomaly_score value(s) outside [0, 1], first at row {i} ({scores[i]})"
        )


def write_result(
    out: str | Path,
    label: str,
    cf: CorpusFile,
    timestamps: np.ndarray,
    values: np.ndarray,
    scores: np.ndarray,
) -> Path:
    """Write one result file (``timestamp,value,anomaly_score``) and return its path.

    Timestamps are written as ``%Y-%m-%d %H:%M:%S`` (with microseconds only
    when a timestamp has a fraction of a second); scores must be in [0, 1].
    """
    path = result_path(out, label, cf)
    ts = pd.DatetimeIndex(np.asarray(timestamps).astype("datetime64[ns]"))
    try:
        x = np.asarray(values, dtype=np.float64)
        sc = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{path}: values and scores must be numeric ({exc})") from None
    if not (len(ts) == len(x) == len(sc)) or x.ndim != 1 or sc.ndim != 1:
        raise InvalidInputError(
            f"{path}: lengths differ: {len(ts)} timestamps, {len(x)} values, {len(sc)} scores"
        )
    _check_scores(sc, str(path))
    fmt = TIMESTAMP_FORMAT if (ts.asi8 % 1_000_000_000 == 0).all() else TIMESTAMP_FORMAT + ".%f"
    frame = pd.DataFrame({"timestamp": ts.strftime(fmt), "value": x, "anomaly_score": sc})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(path)
    return path


def read_result(out: str | Path, label: str, cf: CorpusFile, *, series: Series | None = None) -> np.ndarray:
    """The ``anomaly_score`` column of a result file, checked against the data file.

    The result must have one row per data row with the same timestamps, and
    every score must be finite and in [0, 1]. ``series`` (the loaded data
    file) saves reading the data file again.
    """
    path = result_path(out, label, cf)
    if not path.is_file():
        raise InvalidInputError(f"result file not found: {path} (for {cf.key})")
    frame = _read_csv_frame(path)
    missing = [c for c in ("timestamp", "anomaly_score") if c not in frame.columns]
    if missing:
        raise InvalidInputError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; found {', '.join(map(repr, frame.columns))}"
        )
    if series is None:
        series = load_file(cf)
    if len(frame) != len(series):
        raise InvalidInputError(f"{path}: {len(frame)} rows but the data file {cf.key} has {len(series)}")
    col = frame["anomaly_score"]
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        scores = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        scores = pd.to_numeric(col.astype(object), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.isnan(scores) & col.notna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidInputError(f"{path}: non-numeric anomaly_score {str(col.iloc[i])!r} at row {i}")
    _check_scores(scores, str(path))
    ts_col = frame["timestamp"]
    try:
        with_ts = pd.to_datetime(ts_col, format="ISO8601") if not pd.api.types.is_datetime64_any_dtype(ts_col.dtype) else ts_col
        got = with_ts.to_numpy(dtype="datetime64[ns]")
    except (ValueError, TypeError):
        raise InvalidInputError(f"{path}: unparseable values in column 'timestamp'") from None
    differ = got != series.timestamps
    if differ.any():
        i = int(np.flatnonzero(differ)[0])
        raise InvalidInputError(
            f"{path}: timestamp at row {i} is {pd.Timestamp(got[i])}, the data file {cf.key} has"
            f" {pd.Timestamp(series.timestamps[i])}"
        )
    return scores
