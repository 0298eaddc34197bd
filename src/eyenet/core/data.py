"""Loading and validating time series.

Every loader returns data that downstream code can trust: timestamps parsed to
``datetime64[ns]`` and strictly increasing, values ``float64`` and finite, and
at least ``min_rows`` rows. Anything else raises an :class:`InvalidInputError`
(or its subclass :class:`NotEnoughDataError`) whose message names the file, the
column and the first offending row.

Row numbers in messages are 0-based positions in the series. For CSV files the
message also gives the line number in the file (header on line 1), which is
what an editor shows.

Numeric timestamps (integers or floats) are read as Unix epoch seconds, the
convention of Prometheus and most metric stores. Time-zone aware timestamps
are converted to UTC and stored without a zone.
"""
from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from eyenet.core.errors import InvalidInputError, NotEnoughDataError

__all__ = [
    "Series",
    "validate_series",
    "read_csv",
    "read_parquet",
    "read_series",
    "read_frame",
    "CSV_SUFFIXES",
    "PARQUET_SUFFIXES",
]

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")

# Formats a 0-based row position for an error message.
_Where = Callable[[int], str]


def _row(i: int) -> str:
    return f"row {i}"


def _csv_row(i: int) -> str:
    return f"row {i} (line {i + 2})"


@dataclass(frozen=True, eq=False)
class Series:
    """A validated univariate time series (read-only arrays)."""

    name: str
    timestamps: np.ndarray  # datetime64[ns], strictly increasing unless loaded with require_increasing=False
    values: np.ndarray  # float64, 1-D, finite

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def to_frame(self) -> pd.DataFrame:
        """Columns ``timestamp`` and ``value`` (a fresh, writable copy)."""
        return pd.DataFrame({"timestamp": self.timestamps.copy(), "value": self.values.copy()})

    def __repr__(self) -> str:
        if len(self):
            span = f"{self.timestamps[0]} .. {self.timestamps[-1]}"
        else:
            span = "empty"
        return f"Series(name={self.name!r}, rows={len(self)}, {span})"


# ----------------------------------------------------------------------------------------------
# parsing


def _parse_timestamps(raw: Any, *, context: str, where: _Where = _row) -> np.ndarray:
    """Parse timestamps to a datetime64[ns] array; the message names the first unparseable row."""
    if isinstance(raw, (pd.Series, pd.Index)):
        s = pd.Series(raw.array if isinstance(raw, pd.Index) else raw.array, copy=False)
    else:
        arr = np.asarray(raw)
        if arr.ndim != 1:
            raise InvalidInputError(f"{context}: timestamps must be 1-D, got shape {arr.shape}")
        s = pd.Series(arr, copy=False)
    s = s.reset_index(drop=True)
    n = len(s)
    if n == 0:
        return np.empty(0, dtype="datetime64[ns]")

    dtype = s.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        parsed = s.dt.tz_convert("UTC").dt.tz_localize(None)
    elif pd.api.types.is_datetime64_dtype(dtype):
        parsed = s
    elif pd.api.types.is_bool_dtype(dtype):
        raise InvalidInputError(f"{context}: timestamps are booleans, not times")
    elif pd.api.types.is_numeric_dtype(dtype):
        secs = s.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(secs)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidInputError(f"{context}: missing or non-finite timestamp at {where(i)}")
        try:
            parsed = pd.Series(pd.to_datetime(secs, unit="s"))
        except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime) as exc:
            raise InvalidInputError(f"{context}: epoch-second timestamps out of range ({exc})") from None
    else:
        obj = s.astype(object)
        missing = obj.isna().to_numpy()
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            raise InvalidInputError(f"{context}: missing timestamp at {where(i)}")
        parsed = None
        best_bad: np.ndarray | None = None
        for fmt in ("ISO8601", None):
            try:
                kwargs: dict[str, Any] = {"errors": "coerce", "utc": True}
                if fmt is not None:
                    kwargs["format"] = fmt
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    cand = pd.to_datetime(obj, **kwargs)
            except (ValueError, TypeError, OverflowError):
                continue
            bad = cand.isna().to_numpy()
            if best_bad is None or bad.sum() < best_bad.sum():
                parsed, best_bad = cand, bad
            if not bad.any():
                break
        if parsed is None or best_bad is None:
            raise InvalidInputError(f"{context}: timestamps could not be parsed")
        if best_bad.any():
            i = int(np.flatnonzero(best_bad)[0])
            raise InvalidInputError(
                f"{context}: unparseable timestamp {str(obj.iloc[i])!r} at {where(i)}"
                f" ({int(best_bad.sum())} unparseable in total)"
            )
        parsed = parsed.dt.tz_localize(None)

    nat = parsed.isna().to_numpy()
    if nat.any():
        i = int(np.flatnonzero(nat)[0])
        raise InvalidInputError(f"{context}: missing timestamp at {where(i)}")
    try:
        out = parsed.to_numpy(dtype="datetime64[ns]")
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime) as exc:
        raise InvalidInputError(f"{context}: timestamps out of the representable range ({exc})") from None
    return out


def _parse_values(raw: Any, *, context: str, where: _Where = _row) -> np.ndarray:
    """Parse numbers to float64 (non-finite values are kept; the caller checks them)."""
    if isinstance(raw, (pd.Series, pd.Index)):
        s = pd.Series(raw.array, copy=False).reset_index(drop=True)
        if pd.api.types.is_bool_dtype(s.dtype):
            raise InvalidInputError(f"{context}: values are booleans, not numbers")
        if pd.api.types.is_numeric_dtype(s.dtype):
            return s.to_numpy(dtype=np.float64, na_value=np.nan)
        items = s.astype(object).to_numpy()
    else:
        arr = np.asarray(raw)
        if arr.ndim != 1:
            raise InvalidInputError(f"{context}: values must be 1-D, got shape {arr.shape}")
        if arr.dtype.kind == "b":
            raise InvalidInputError(f"{context}: values are booleans, not numbers")
        if arr.dtype.kind in "iuf":
            return arr.astype(np.float64)
        items = arr.astype(object)
    out = np.empty(len(items), dtype=np.float64)
    for i, v in enumerate(items):
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            out[i] = np.nan
            continue
        if isinstance(v, bool):
            raise InvalidInputError(f"{context}: non-numeric value {v!r} at {where(i)}")
        try:
            out[i] = float(v.strip() if isinstance(v, str) else v)
        except (TypeError, ValueError):
            raise InvalidInputError(f"{context}: non-numeric value {str(v)!r} at {where(i)}") from None
    return out


def _check_timestamps(ts: np.ndarray, *, context: str, where: _Where = _row) -> None:
    if len(ts) < 2:
        return
    diff = np.diff(ts.astype(np.int64))
    dup = diff == 0
    back = diff < 0
    if dup.any() or back.any():
        i_dup = int(np.flatnonzero(dup)[0]) + 1 if dup.any() else len(ts)
        i_back = int(np.flatnonzero(back)[0]) + 1 if back.any() else len(ts)
        if i_dup < i_back:
            raise InvalidInputError(
                f"{context}: duplicate timestamp {pd.Timestamp(ts[i_dup])} at {where(i_dup)}"
                f" (same as {where(i_dup - 1)})"
            )
        raise InvalidInputError(
            f"{context}: not sorted: {pd.Timestamp(ts[i_back])} at {where(i_back)}"
            f" comes before {pd.Timestamp(ts[i_back - 1])} at {where(i_back - 1)}"
        )


def _check_finite(x: np.ndarray, *, context: str, where: _Where = _row) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        idx = np.flatnonzero(bad)
        i = int(idx[0])
        n_nan = int(np.isnan(x).sum())
        n_inf = int(bad.sum()) - n_nan
        kinds = ", ".join(k for k, c in (("NaN or missing", n_nan), ("infinite", n_inf)) if c)
        raise InvalidInputError(
            f"{context}: {int(bad.sum())} non-finite value(s) ({kinds}), first at {where(i)} ({x[i]})"
        )


def _validate(
    timestamps: Any,
    values: Any,
    *,
    name: str,
    min_rows: int,
    context: str,
    value_context: str,
    ts_context: str,
    where: _Where,
    require_increasing: bool = True,
) -> Series:
    ts = _parse_timestamps(timestamps, context=ts_context, where=where)
    x = _parse_values(values, context=value_context, where=where)
    if len(ts) != len(x):
        raise InvalidInputError(f"{context}: {len(ts)} timestamps but {len(x)} values")
    if len(x) < min_rows:
        raise NotEnoughDataError(f"{context}: needs at least {min_rows} rows, got {len(x)}")
    if require_increasing:
        _check_timestamps(ts, context=ts_context, where=where)
    _check_finite(x, context=value_context, where=where)
    ts = np.ascontiguousarray(ts)
    x = np.ascontiguousarray(x)
    ts.setflags(write=False)
    x.setflags(write=False)
    return Series(name=name, timestamps=ts, values=x)


def validate_series(
    timestamps: Any, values: Any, *, name: str, min_rows: int = 2, require_increasing: bool = True
) -> Series:
    """Validate in-memory data and return a :class:`Series`.

    Timestamps may be ``datetime64`` values, strings, ``pandas`` timestamps or
    epoch seconds. They must be strictly increasing; values must be finite
    numbers; there must be at least ``min_rows`` rows.

    ``require_increasing=False`` keeps rows exactly as given even when
    timestamps repeat or step back (recorded streams such as the NAB corpus
    contain clock changes); everything else is still checked.
    """
    if isinstance(min_rows, bool) or not isinstance(min_rows, (int, np.integer)) or min_rows < 0:
        raise InvalidInputError(f"{name}: min_rows must be a non-negative integer, got {min_rows!r}")
    return _validate(
        timestamps,
        values,
        name=name,
        min_rows=int(min_rows),
        context=name,
        value_context=f"{name}: values",
        ts_context=f"{name}: timestamps",
        where=_row,
        require_increasing=require_increasing,
    )


# ----------------------------------------------------------------------------------------------
# files


def _existing_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"file not found: {p}")
    if not p.is_file():
        raise InvalidInputError(f"not a file: {p}")
    return p


def _check_field_counts(p: Path) -> None:
    """Raise if a line has a different number of fields than the header (pandas would shift or drop them)."""
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return
            for row in reader:
                if row and len(row) != len(header):
                    raise InvalidInputError(
                        f"{p}: malformed CSV: line {reader.line_num} has {len(row)} fields, the header has {len(header)}"
                    )
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"{p}: malformed CSV: {exc}") from None


def _read_csv_frame(p: Path) -> pd.DataFrame:
    """Read a CSV with the pyarrow engine; fall back to the C engine for odd files and messages."""
    if p.stat().st_size == 0:
        raise NotEnoughDataError(f"{p}: empty file (no header, no rows)")
    try:
        df = pd.read_csv(p, engine="pyarrow")
    except Exception:  # find the offending line, then let the C engine read what pyarrow would not
        _check_field_counts(p)
        try:
            df = pd.read_csv(p, engine="c", index_col=False)
        except pd.errors.EmptyDataError:
            raise NotEnoughDataError(f"{p}: empty file (no header, no rows)") from None
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            msg = " ".join(str(exc).split())
            raise InvalidInputError(f"{p}: malformed CSV: {msg}") from None
    df.columns = [str(c).lstrip("\ufeff").strip() for c in df.columns]
    return df


def _require_columns(df: pd.DataFrame, cols: Sequence[str], p: Path) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise InvalidInputError(
            f"{p}: missing column(s) {names}; found {', '.join(repr(str(c)) for c in df.columns)}"
        )
    dup = [c for c in cols if list(df.columns).count(c) > 1]
    if dup:
        raise InvalidInputError(f"{p}: column {dup[0]!r} appears more than once")


def _series_from_frame(
    df: pd.DataFrame,
    p: Path,
    *,
    timestamp_col: str,
    value_col: str,
    min_rows: int,
    where: _Where,
    require_increasing: bool,
) -> Series:
    _require_columns(df, [timestamp_col, value_col], p)
    if isinstance(min_rows, bool) or not isinstance(min_rows, (int, np.integer)) or min_rows < 0:
        raise InvalidInputError(f"{p}: min_rows must be a non-negative integer, got {min_rows!r}")
    return _validate(
        df[timestamp_col],
        df[value_col],
        name=p.stem,
        min_rows=int(min_rows),
        context=str(p),
        value_context=f"{p}: column {value_col!r}",
        ts_context=f"{p}: column {timestamp_col!r}",
        where=where,
        require_increasing=require_increasing,
    )


def read_csv(
    path: str | Path,
    *,
    timestamp_col: str = "timestamp",
    value_col: str = "value",
    min_rows: int = 2,
    require_increasing: bool = True,
) -> Series:
    """Read one series from a CSV file with a header (LF or CRLF; final newline optional).

    See :func:`validate_series` for the checks and ``require_increasing``.
    """
    p = _existing_file(path)
    df = _read_csv_frame(p)
    return _series_from_frame(
        df,
        p,
        timestamp_col=timestamp_col,
        value_col=value_col,
        min_rows=min_rows,
        where=_csv_row,
        require_increasing=require_increasing,
    )


def _read_parquet_frame(p: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(p)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInputError(f"{p}: not a readable Parquet file ({exc})") from None
    if columns is not None:
        missing = [c for c in columns if c not in schema.names]
        if missing:
            names = ", ".join(repr(c) for c in missing)
            raise InvalidInputError(f"{p}: missing column(s) {names}; found {', '.join(map(repr, schema.names))}")
    try:
        table = pq.read_table(p, columns=list(columns) if columns is not None else None)
        return table.to_pandas()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidInputError(f"{p}: could not read Parquet data ({exc})") from None


def read_parquet(
    path: str | Path,
    *,
    timestamp_col: str = "timestamp",
    value_col: str = "value",
    min_rows: int = 2,
    require_increasing: bool = True,
) -> Series:
    """Read one series from a Parquet file (the same validation as :func:`read_csv`)."""
    p = _existing_file(path)
    df = _read_parquet_frame(p, [timestamp_col, value_col])
    return _series_from_frame(
        df,
        p,
        timestamp_col=timestamp_col,
        value_col=value_col,
        min_rows=min_rows,
        where=_row,
        require_increasing=require_increasing,
    )


def _kind(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    known = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
    raise InvalidInputError(f"{path}: unsupported file type {suffix or '(no suffix)'!r}; expected one of {known}")


def read_series(
    path: str | Path,
    *,
    timestamp_col: str = "timestamp",
    value_col: str = "value",
    min_rows: int = 2,
    require_increasing: bool = True,
) -> Series:
    """Read a series from ``.csv`` or ``.parquet``/``.pq``, chosen by the file suffix."""
    reader = read_csv if _kind(path) == "csv" else read_parquet
    return reader(
        path,
        timestamp_col=timestamp_col,
        value_col=value_col,
        min_rows=min_rows,
        require_increasing=require_increasing,
    )


def read_frame(path: str | Path, *, timestamp_col: str = "timestamp", min_rows: int = 2) -> pd.DataFrame:
    """Read a multivariate series (``.csv`` or Parquet).

    Returns a frame indexed by a strictly increasing ``DatetimeIndex`` named
    ``timestamp_col`` with one finite ``float64`` column per metric. Every
    column other than the timestamp must be numeric.
    """
    kind = _kind(path)
    p = _existing_file(path)
    if kind == "csv":
        df = _read_csv_frame(p)
        where = _csv_row
    else:
        df = _read_parquet_frame(p)
        where = _row
    _require_columns(df, [timestamp_col], p)
    metrics = [c for c in df.columns if c != timestamp_col]
    if not metrics:
        raise InvalidInputError(f"{p}: no value columns besides {timestamp_col!r}")
    seen: set[str] = set()
    for c in metrics:
        if c in seen:
            raise InvalidInputError(f"{p}: column {c!r} appears more than once")
        seen.add(c)
    ts = _parse_timestamps(df[timestamp_col], context=f"{p}: column {timestamp_col!r}", where=where)
    if len(ts) < min_rows:
        raise NotEnoughDataError(f"{p}: needs at least {min_rows} rows, got {len(ts)}")
    _check_timestamps(ts, context=f"{p}: column {timestamp_col!r}", where=where)
    cols: dict[str, np.ndarray] = {}
    for c in metrics:
        ctx = f"{p}: column {c!r}"
        x = _parse_values(df[c], context=ctx, where=where)
        _check_finite(x, context=ctx, where=where)
        cols[str(c)] = x
    return pd.DataFrame(cols, index=pd.DatetimeIndex(ts, name=timestamp_col))


def read_column(path: str | Path, column: str, *, timestamp_col: str = "timestamp") -> tuple[np.ndarray, pd.Series]:
    """The timestamps of a local ``.csv`` / Parquet file and its column ``column`` as read (not parsed
    as numbers): for columns that are not values, such as labels."""
    kind = _kind(path)
    p = _existing_file(path)
    frame, where = (_read_csv_frame(p), _csv_row) if kind == "csv" else (_read_parquet_frame(p), _row)
    _require_columns(frame, [timestamp_col, column], p)
    ts = _parse_timestamps(frame[timestamp_col], context=f"{p}: column {timestamp_col!r}", where=where)
    return ts, frame[column].reset_index(drop=True)


#: optional column naming the series of each row in a multi-series file
SERIES_COL = "series"


def frame_series(
    frame: pd.DataFrame, source: str | Path, *, timestamp_col: str = "timestamp", value_col: str = "value",
    min_rows: int = 2, where: _Where = _row,
) -> list[Series]:
    """Validated series of a frame with ``timestamp`` and ``value`` columns; a ``series`` column
    splits it into one series per distinct name (each sorted and checked on its own)."""
    p = Path(source)
    if SERIES_COL not in frame.columns:
        return [_series_from_frame(frame, p, timestamp_col=timestamp_col, value_col=value_col,
                                   min_rows=min_rows, where=where, require_increasing=True)]
    out = []
    for name, g in frame.groupby(SERIES_COL, sort=True):
        s = _series_from_frame(g.reset_index(drop=True), Path(f"{p}[series={name}]"), timestamp_col=timestamp_col,
                               value_col=value_col, min_rows=min_rows, where=_row, require_increasing=True)
        out.append(Series(name=str(name), timestamps=s.timestamps, values=s.values))
    return out


def read_many(path: str | Path, *, timestamp_col: str = "timestamp", value_col: str = "value",
              min_rows: int = 2) -> list[Series]:
    """The series of a local ``.csv`` / Parquet file: one, or one per name in its ``series`` column."""
    kind = _kind(path)
    p = _existing_file(path)
    frame, where = (_read_csv_frame(p), _csv_row) if kind == "csv" else (_read_parquet_frame(p), _row)
    return frame_series(frame, p, timestamp_col=timestamp_col, value_col=value_col, min_rows=min_rows, where=where)
