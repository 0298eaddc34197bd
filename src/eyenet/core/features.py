"""Feature extraction shared by training and serving: vectorized, causal, validated.

Every window feature at row ``i`` uses rows ``i - window + 1 .. i`` only, so the
same numbers come out whether a series is processed offline in one go or
point by point behind a service. Rows without a full window are NaN ("not
ready"), never a made-up value.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from eyenet.core.detectors.base import as_series
from eyenet.core.errors import InvalidInputError, InvalidParameterError, NotEnoughDataError, UnknownNameError

WINDOW_STAT_NAMES: tuple[str, ...] = ("mean", "std", "min", "max", "p75", "last_z", "slope")
TIME_FEATURE_NAMES: tuple[str, ...] = ("hour", "weekday", "is_weekend", "hour_sin", "hour_cos")
#: |last_z| is capped here so a jump out of a constant window stays finite
Z_CAP = 1_000.0
#: a standard deviation at or below this fraction of the mean level counts as zero
_REL_TOL = 1e-10
#: windows per chunk, so temporary copies stay around 32 MB whatever the series length
_CHUNK_VALUES = 1 << 22


def _check_window(window: Any, n: int, *, name: str = "window") -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
        raise InvalidParameterError(f"{name}: must be an integer >= 2, got {window!r}")
    if window < 2:
        raise InvalidParameterError(f"{name}: must be >= 2, got {window}")
    if window > n:
        raise NotEnoughDataError(f"{name}: {window} is longer than the series ({n} points)")
    return int(window)


def window_view(x: np.ndarray, window: int) -> np.ndarray:
    """Read-only view of every full trailing window: shape ``(n - window + 1, window)``."""
    x = as_series(x, name="x")
    w = _check_window(window, len(x))
    return sliding_window_view(x, w)


def window_stats(x: np.ndarray, window: int) -> np.ndarray:
    """Statistics of every full window, shape ``(n - window + 1, 7)``; row ``j`` is the window ending at ``j + window - 1``.

    Columns follow :data:`WINDOW_STAT_NAMES`: mean, std (population), min, max,
    75th percentile (linear interpolation), ``last_z`` (the last point's z-score
    against the window's other points; 0 when those are constant and it equals
    them, else capped at +-:data:`Z_CAP`) and ``slope`` (least-squares trend per step).
    """
    x = as_series(x, name="x")
    w = _check_window(window, len(x))
    view = sliding_window_view(x, w)
    m = len(view)
    out = np.empty((m, len(WINDOW_STAT_NAMES)))
    # Two-pass moments on the view: exact for constant or large-offset windows,
    # unlike running sums. Chunked so temporaries stay small for long series.
    chunk = max(1, _CHUNK_VALUES // w)
    for lo in range(0, m, chunk):
        v = view[lo : lo + chunk]
        o = out[lo : lo + chunk]
        mean = v.mean(axis=1)
        o[:, 0] = mean
        m2 = np.square(v - mean[:, None]).sum(axis=1)
        o[:, 1] = np.sqrt(m2 / w)
        o[:, 2] = v.min(axis=1)
        o[:, 3] = v.max(axis=1)
        o[:, 4] = np.percentile(v, 75, axis=1)
        o[:, 5] = _last_z(v[:, -1], mean, m2, w)
    k = np.arange(w, dtype=np.float64) - (w - 1) / 2.0
    out[:, 6] = np.correlate(x, k / np.dot(k, k), mode="valid")
    return out


def _last_z(last: np.ndarray, mean: np.ndarray, m2: np.ndarray, w: int) -> np.ndarray:
    """z-score of ``last`` against the other ``w - 1`` points, from the full window's moments."""
    mean_o = (w * mean - last) / (w - 1)
    m2_o = np.maximum(m2 - (last - mean) * (last - mean_o), 0.0)  # remove one point (Welford)
    std_o = np.sqrt(m2_o / (w - 1))
    diff = last - mean_o
    tol = _REL_TOL * np.maximum(np.abs(mean_o), np.abs(last))
    flat = std_o <= tol
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(flat, 0.0, diff / np.where(flat, 1.0, std_o))
    z = np.where(flat & (np.abs(diff) > tol), np.sign(diff) * Z_CAP, z)
    return np.clip(z, -Z_CAP, Z_CAP)


def _trailing(values: np.ndarray, n: int, window: int) -> np.ndarray:
    """Place per-window values at the row each window ends on; NaN before the first full window."""
    out = np.full(n, np.nan)
    out[window - 1 :] = values
    return out


def rolling_mean_std(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Causal trailing mean and population std, length ``n``; NaN until the first full window."""
    x = as_series(x, name="x")
    w = _check_window(window, len(x))
    view = sliding_window_view(x, w)
    mean = view.mean(axis=1)
    chunk = max(1, _CHUNK_VALUES // w)
    std = np.concatenate([
        np.sqrt(np.square(view[lo : lo + chunk] - mean[lo : lo + chunk, None]).mean(axis=1))
        for lo in range(0, len(view), chunk)
    ])
    return _trailing(mean, len(x), w), _trailing(std, len(x), w)


def trend_slope(x: np.ndarray, window: int) -> np.ndarray:
    """Causal least-squares slope (units per step) over the trailing window, length ``n``; NaN until full."""
    x = as_series(x, name="x")
    w = _check_window(window, len(x))
    k = np.arange(w, dtype=np.float64) - (w - 1) / 2.0
    return _trailing(np.correlate(x, k / np.dot(k, k), mode="valid"), len(x), w)


def seasonality_strength(x: np.ndarray, period: int) -> float:
    """How much of the detrended variance a repeating ``period``-step profile explains, in [0, 1].

    ``max(0, 1 - var(remainder) / var(detrended))`` where the trend is a
    ``period``-long moving average, the seasonal part is the mean profile per
    phase and both variances are degrees-of-freedom adjusted. About 0 for a
    constant or patternless series, near 1 for a clean cycle.
    Needs at least two full periods. Describes a whole series (not causal).
    """
    x = as_series(x, name="x")
    if isinstance(period, bool) or not isinstance(period, (int, np.integer)) or period < 2:
        raise InvalidParameterError(f"period: must be an integer >= 2, got {period!r}")
    if len(x) < 2 * period:
        raise NotEnoughDataError(f"period: {period} needs at least {2 * period} points, got {len(x)}")
    trend = np.convolve(x, np.full(period, 1.0 / period), mode="valid")
    offset = period // 2
    detrended = x[offset : offset + len(trend)] - trend
    phase = (np.arange(len(detrended)) + offset) % period
    profile = np.bincount(phase, weights=detrended, minlength=period) / np.bincount(phase, minlength=period)
    remainder = detrended - profile[phase]
    m = len(detrended)
    total = float(np.square(detrended - detrended.mean()).sum()) / (m - 1)
    if total <= _REL_TOL * max(float(np.abs(x).max()), 1.0) ** 2:
        return 0.0
    # Degrees-of-freedom adjusted, so a per-phase profile fitted to pure noise scores about 0.
    unexplained = float(np.square(remainder).sum()) / (m - period)
    return float(np.clip(1.0 - unexplained / total, 0.0, 1.0))


def time_features(timestamps: Any) -> pd.DataFrame:
    """Calendar features per timestamp: hour, weekday (Mon=0), is_weekend, and hour of day on the unit circle."""
    try:
        ts = pd.DatetimeIndex(pd.to_datetime(timestamps))
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInputError(f"timestamps: not datetimes ({exc})") from None
    if ts.hasnans:
        raise InvalidInputError(f"timestamps: {int(ts.isna().sum())} missing value(s)")
    frac = (ts.hour.to_numpy() + ts.minute.to_numpy() / 60.0 + ts.second.to_numpy() / 3600.0) / 24.0
    weekday = ts.day_of_week.to_numpy()
    return pd.DataFrame({
        "hour": ts.hour.to_numpy().astype(np.int64),
        "weekday": weekday.astype(np.int64),
        "is_weekend": (weekday >= 5).astype(np.int64),
        "hour_sin": np.sin(2 * np.pi * frac),
        "hour_cos": np.cos(2 * np.pi * frac),
    })


def ratio(a: Any, b: Any, name: str) -> pd.Series:
    """``a / b`` element-wise, 0 where ``b`` is 0 (an idle interval, not an infinite ratio)."""
    if not isinstance(name, str) or not name:
        raise InvalidParameterError(f"name: must be a non-empty string, got {name!r}")
    index = a.index if isinstance(a, pd.Series) else None
    try:
        num = np.asarray(a, dtype=np.float64)
        den = np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name}: operands are not numeric ({exc})") from None
    if num.ndim != 1 or num.shape != den.shape:
        raise InvalidInputError(f"{name}: operands must be 1-D and the same length, got {num.shape} and {den.shape}")
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return pd.Series(out, index=index, name=name)


#: derived ratio columns: name -> (numerator, denominator)
RATIOS: dict[str, tuple[str, str]] = {
    "bytes_per_packet_in": ("bytes_in", "packets_in"),
    "bytes_per_packet_out": ("bytes_out", "packets_out"),
}


def derived_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with each ratio of :data:`RATIOS` added whose two columns are present."""
    if not isinstance(frame, pd.DataFrame):
        raise InvalidInputError(f"frame: expected a DataFrame, got {type(frame).__name__}")
    out = frame.copy()
    for name, (num, den) in RATIOS.items():
        if num in frame.columns and den in frame.columns:
            out[name] = ratio(frame[num], frame[den], name)
    return out


def build_features(frame: pd.DataFrame | pd.Series, *, window: int = 32, value_columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Causal feature table for a univariate or multivariate frame, one row per input row.

    Per value column ``c`` (plus the byte-per-packet ratios when their columns
    are among them): ``c`` itself, ``c_diff`` (change since the previous row)
    and ``c_<stat>`` for every :data:`WINDOW_STAT_NAMES` over the trailing
    ``window`` (``c_mean`` / ``c_std`` are the rolling mean and std). Calendar
    features are added when the frame has a ``timestamp`` column or a
    DatetimeIndex. The first ``window - 1`` rows are all NaN (not ready).
    Value columns default to every numeric column except ``timestamp``.
    """
    if isinstance(frame, pd.Series):
        frame = frame.to_frame(name=frame.name if frame.name is not None else "value")
    if not isinstance(frame, pd.DataFrame):
        raise InvalidInputError(f"frame: expected a DataFrame or Series, got {type(frame).__name__}")
    n = len(frame)
    if value_columns is None:
        value_columns = [c for c in frame.columns if c != "timestamp" and pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
        if not value_columns:
            raise InvalidInputError(f"frame: no numeric value column (columns: {list(frame.columns)})")
    else:
        if isinstance(value_columns, str):
            value_columns = [value_columns]
        value_columns = list(value_columns)
        if not value_columns:
            raise InvalidParameterError("value_columns: must name at least one column")
        for c in value_columns:
            if c not in frame.columns:
                raise UnknownNameError(f"value_columns: no column {c!r} (columns: {list(frame.columns)})")
    if n == 0:
        raise NotEnoughDataError("frame: no rows")
    w = _check_window(window, n)

    values = {c: as_series(frame[c].to_numpy(), name=str(c)) for c in value_columns}
    columns = list(value_columns)
    for name, (num, den) in RATIOS.items():
        if num in values and den in values and name not in values:
            values[name] = ratio(values[num], values[den], name).to_numpy()
            columns.append(name)

    blocks: dict[str, np.ndarray] = {}
    for c in columns:
        x = values[c]
        blocks[c] = x
        blocks[f"{c}_diff"] = np.concatenate([[np.nan], np.diff(x)])
        stats = window_stats(x, w)
        for j, s in enumerate(WINDOW_STAT_NAMES):
            blocks[f"{c}_{s}"] = _trailing(stats[:, j], n, w)

    timestamps = None
    if "timestamp" in frame.columns:
        timestamps = frame["timestamp"]
    elif isinstance(frame.index, pd.DatetimeIndex):
        timestamps = frame.index
    if timestamps is not None:
        tf = time_features(timestamps)
        for c in TIME_FEATURE_NAMES:
            blocks[c] = tf[c].to_numpy(dtype=np.float64)

    out = pd.DataFrame(blocks, index=frame.index)
    out.iloc[: w - 1] = np.nan
    return out
