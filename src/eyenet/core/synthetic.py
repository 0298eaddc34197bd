"""Seeded synthetic telemetry for operational metrics, with labelled injected anomalies.

The clean series follow what network and host metrics look like: a daily load
curve peaking in the afternoon, lower traffic at weekends, a slowly wandering
demand level, bytes that track packets (about 800 bytes per packet), CPU and
memory as percentages, a positive heavy-tailed latency that grows with load and
a temperature that follows load with a lag.

Anomalies are injected per metric after an anomaly-free prefix (so detectors
have clean data to learn from), never overlap, and are labelled by row range.
Their size is set against the local noise level just before them, so every
kind is visible whatever the metric's unit. The clean series and the injected
anomalies come from separate random streams: the same seed with
``anomalies_per_metric=0`` gives exactly the clean baseline, and each metric's
series is the same whichever other metrics are requested.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from eyenet.core.errors import InvalidParameterError, NotEnoughDataError, UnknownNameError

METRICS: tuple[str, ...] = (
    "bytes_in",
    "bytes_out",
    "packets_in",
    "packets_out",
    "latency_ms",
    "cpu_pct",
    "mem_pct",
    "temperature_c",
)
ANOMALY_KINDS: tuple[str, ...] = ("spike", "dip", "level_shift", "drift", "variance", "stuck", "seasonality_break")

#: rows before an anomaly used to measure the local noise level it is scaled to
LOCAL_WINDOW = 36
#: fewest rows :func:`generate` accepts
MIN_ROWS = 2 * LOCAL_WINDOW

# Value bounds per metric, re-applied after injection.
_BOUNDS: dict[str, tuple[float, float]] = {
    "bytes_in": (0.0, np.inf),
    "bytes_out": (0.0, np.inf),
    "packets_in": (0.0, np.inf),
    "packets_out": (0.0, np.inf),
    "latency_ms": (0.1, np.inf),
    "cpu_pct": (0.0, 100.0),
    "mem_pct": (0.0, 100.0),
    "temperature_c": (-np.inf, np.inf),
}
# Metrics whose shifts and drifts only go up (a latency regression, not an improvement).
_UPWARD_ONLY = frozenset({"latency_ms"})
#: a downward anomaly removes at most this fraction of the expected level above the metric's floor
_MAX_DROP = 0.8


@dataclass(frozen=True)
class InjectedAnomaly:
    """One injected anomaly: rows ``start`` (inclusive) to ``end`` (exclusive)."""

    kind: str
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


@dataclass
class Telemetry:
    """Generated telemetry: ``frame`` has a ``timestamp`` column and one column per metric."""

    frame: pd.DataFrame
    anomalies: dict[str, list[InjectedAnomaly]] = field(default_factory=dict)

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(c for c in self.frame.columns if c != "timestamp")

    def labels(self, metric: str) -> np.ndarray:
        """Boolean array, True on the rows of ``metric`` inside an injected anomaly."""
        if metric not in self.anomalies:
            raise UnknownNameError(f"metric {metric!r} is not in this telemetry (has: {list(self.metrics)})")
        out = np.zeros(len(self.frame), dtype=bool)
        for a in self.anomalies[metric]:
            out[a.start : a.end] = True
        return out


def generate(
    *,
    n: int = 4032,
    freq: str = "5min",
    start: str = "2026-01-05",
    metrics: Sequence[str] = METRICS,
    anomalies_per_metric: int = 3,
    kinds: Sequence[str] = ANOMALY_KINDS,
    seed: int = 0,
    anomaly_free_prefix: float = 0.25,
) -> Telemetry:
    """Generate ``n`` rows of telemetry every ``freq`` from ``start``; deterministic under ``seed``.

    The default is two weeks at five-minute resolution with three anomalies per
    metric in the last three quarters of the rows.
    """
    metrics = _check_names("metrics", metrics, METRICS)
    kinds = _check_names("kinds", kinds, ANOMALY_KINDS)
    step = _check_params(n, freq, start, anomalies_per_metric, seed, anomaly_free_prefix)
    timestamps = pd.date_range(pd.Timestamp(start), periods=n, freq=step)
    rows_per_day = max(1, int(round(pd.Timedelta("1D") / step)))

    root = np.random.SeedSequence(seed)
    clean_seed, anomaly_seed = root.spawn(2)
    values, seasonal = _clean_series(timestamps, clean_seed)

    anomaly_seeds = anomaly_seed.spawn(len(METRICS))
    frame = pd.DataFrame({"timestamp": timestamps})
    injected: dict[str, list[InjectedAnomaly]] = {}
    for m in metrics:
        rng = np.random.default_rng(anomaly_seeds[METRICS.index(m)])
        x = values[m].copy()
        injected[m] = _inject(
            x, seasonal[m], rng,
            count=anomalies_per_metric, kinds=kinds, rows_per_day=rows_per_day,
            first_row=int(np.ceil(anomaly_free_prefix * n)), bounds=_BOUNDS[m], upward_only=m in _UPWARD_ONLY,
        )
        frame[m] = x
    return Telemetry(frame=frame, anomalies=injected)


def series(metric: str, **kw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(timestamps, values, labels)`` of one metric; same values as its column in :func:`generate`."""
    if "metrics" in kw:
        raise InvalidParameterError("series: pass the metric name, not metrics=")
    t = generate(metrics=(metric,), **kw)
    return t.frame["timestamp"].to_numpy(), t.frame[metric].to_numpy(), t.labels(metric)


# -- validation -------------------------------------------------------------------------


def _check_names(arg: str, names: Sequence[str], known: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    if not names:
        raise InvalidParameterError(f"{arg}: must name at least one of {list(known)}")
    for name in names:
        if name not in known:
            raise InvalidParameterError(f"{arg}: unknown name {name!r} (known: {list(known)})")
    if len(set(names)) != len(names):
        raise InvalidParameterError(f"{arg}: duplicate names in {list(names)}")
    return names


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_params(n, freq, start, anomalies_per_metric, seed, prefix) -> pd.Timedelta:
    if not _is_int(n):
        raise InvalidParameterError(f"n: must be an integer, got {n!r}")
    if n < MIN_ROWS:
        raise NotEnoughDataError(f"n: need at least {MIN_ROWS} rows, got {n}")
    try:
        step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"freq: {freq!r} is not a fixed time interval ({exc})") from None
    if step <= pd.Timedelta(0):
        raise InvalidParameterError(f"freq: must be positive, got {freq!r}")
    try:
        pd.Timestamp(start)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"start: {start!r} is not a timestamp ({exc})") from None
    if not _is_int(anomalies_per_metric) or anomalies_per_metric < 0:
        raise InvalidParameterError(f"anomalies_per_metric: must be an integer >= 0, got {anomalies_per_metric!r}")
    if not _is_int(seed) or seed < 0:
        raise InvalidParameterError(f"seed: must be an integer >= 0, got {seed!r}")
    if isinstance(prefix, bool) or not isinstance(prefix, (int, float)) or not 0.0 <= prefix < 1.0:
        raise InvalidParameterError(f"anomaly_free_prefix: must be a fraction in [0, 1), got {prefix!r}")
    if anomalies_per_metric:
        first = max(int(np.ceil(prefix * n)), LOCAL_WINDOW)
        slot = (n - first) // anomalies_per_metric
        if slot < LOCAL_WINDOW + 4:
            raise NotEnoughDataError(
                f"n: {n} rows with anomaly_free_prefix={prefix} leave {n - first} rows, too few for "
                f"anomalies_per_metric={anomalies_per_metric} (each needs {LOCAL_WINDOW + 4})"
            )
    return step


# -- clean series -----------------------------------------------------------------------


def _ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    """Stationary AR(1) noise with marginal standard deviation ``sigma``."""
    eps = rng.normal(0.0, sigma * np.sqrt(1.0 - phi**2), n)
    eps[0] = rng.normal(0.0, sigma)
    return lfilter([1.0], [1.0, -phi], eps)


def _ema(x: np.ndarray, alpha: float) -> np.ndarray:
    return lfilter([alpha], [1.0, alpha - 1.0], x, zi=[x[0] * (1.0 - alpha)])[0]


def _clean_series(timestamps: pd.DatetimeIndex, seed: np.random.SeedSequence) -> tuple[dict, dict]:
    """Clean values and their seasonal (expected) part, for every metric in METRICS."""
    n = len(timestamps)
    shared, *own = seed.spawn(1 + len(METRICS))
    rng = {m: np.random.default_rng(s) for m, s in zip(METRICS, own)}

    tod = (timestamps.hour.to_numpy() * 3600 + timestamps.minute.to_numpy() * 60 + timestamps.second.to_numpy()) / 86400.0
    weekend = timestamps.day_of_week.to_numpy() >= 5
    # Daily load in about [0.17, 0.93]: night trough, afternoon peak; weekends at 65 %.
    daily = 0.55 + 0.30 * np.sin(2 * np.pi * (tod - 0.375)) + 0.08 * np.sin(4 * np.pi * (tod - 0.1))
    demand = np.exp(_ar1(np.random.default_rng(shared), n, 0.995, 0.06))
    load = daily * np.where(weekend, 0.65, 1.0) * demand
    warm = _ema(load, 1.0 / 12.0)  # thermal / memory lag of about an hour at 5-minute steps

    s: dict[str, np.ndarray] = {}
    v: dict[str, np.ndarray] = {}
    s["packets_in"] = 12_000.0 * load
    v["packets_in"] = s["packets_in"] * (1.0 + 0.04 * rng["packets_in"].normal(size=n))
    s["packets_out"] = 10_500.0 * load
    v["packets_out"] = s["packets_out"] * (1.0 + 0.04 * rng["packets_out"].normal(size=n))
    s["bytes_in"] = 800.0 * s["packets_in"]
    v["bytes_in"] = v["packets_in"] * (800.0 + 25.0 * rng["bytes_in"].normal(size=n))
    s["bytes_out"] = 780.0 * s["packets_out"]
    v["bytes_out"] = v["packets_out"] * (780.0 + 25.0 * rng["bytes_out"].normal(size=n))
    s["latency_ms"] = 18.0 + 40.0 * load**2
    r = rng["latency_ms"]
    v["latency_ms"] = s["latency_ms"] * np.exp(0.18 * r.normal(size=n)) + r.exponential(1.5, size=n)
    s["cpu_pct"] = 12.0 + 60.0 * load
    v["cpu_pct"] = s["cpu_pct"] + _ar1(rng["cpu_pct"], n, 0.5, 2.0)
    s["mem_pct"] = 48.0 + 14.0 * warm
    v["mem_pct"] = s["mem_pct"] + _ar1(rng["mem_pct"], n, 0.3, 0.8)
    s["temperature_c"] = 41.0 + 18.0 * warm
    v["temperature_c"] = s["temperature_c"] + 0.25 * rng["temperature_c"].normal(size=n)
    for m in METRICS:
        v[m] = np.clip(v[m], *_BOUNDS[m])
    return v, s


# -- anomaly injection ------------------------------------------------------------------


def _length(kind: str, rows_per_day: int, rng: np.random.Generator) -> int:
    d = rows_per_day
    low, high = {
        "spike": (1, 3),
        "dip": (2, 6),
        "level_shift": (d // 2, (3 * d) // 2),
        "drift": (d // 2, (3 * d) // 2),
        "variance": (d // 12, d // 4),
        "stuck": (d // 24, d // 6),
        "seasonality_break": (d, (3 * d) // 2),
    }[kind]
    low = max(low, 3 if kind in ("drift", "variance", "stuck", "seasonality_break", "level_shift") else 1)
    return int(rng.integers(low, max(low, high) + 1))


def _local_sigma(x: np.ndarray, start: int) -> float:
    """Noise level in the rows before ``start``, from first differences (blind to the daily curve)."""
    w = x[start - LOCAL_WINDOW : start]
    sigma = float(np.diff(w).std() / np.sqrt(2.0))
    return max(sigma, 1e-6 * max(abs(float(w.mean())), 1.0))


def _inject(
    x: np.ndarray,
    seasonal: np.ndarray,
    rng: np.random.Generator,
    *,
    count: int,
    kinds: tuple[str, ...],
    rows_per_day: int,
    first_row: int,
    bounds: tuple[float, float],
    upward_only: bool = False,
) -> list[InjectedAnomaly]:
    """Inject ``count`` non-overlapping anomalies into ``x`` in place; return them in row order."""
    if count == 0:
        return []
    reps = -(-count // len(kinds))
    chosen = np.concatenate([rng.permutation(len(kinds)) for _ in range(reps)])[:count]
    rng.shuffle(chosen)
    first = max(first_row, LOCAL_WINDOW)
    slot = (len(x) - first) // count
    out = []
    for j, k in enumerate(chosen):
        kind = kinds[int(k)]
        lo = first + j * slot + LOCAL_WINDOW  # the gap before keeps the noise estimate clean
        room = first + (j + 1) * slot - lo
        length = min(_length(kind, rows_per_day, rng), room)
        s = int(rng.integers(lo, lo + room - length + 1))
        e = s + length
        sigma = _local_sigma(x, s)
        headroom = float(seasonal[s:e].min()) - bounds[0]  # inf when unbounded below
        _apply(kind, x, seasonal, s, e, sigma, rng, max_drop=_MAX_DROP * headroom, upward_only=upward_only)
        x[s:e] = np.clip(x[s:e], *bounds)
        out.append(InjectedAnomaly(kind=kind, start=s, end=e))
    return out


def _apply(
    kind: str,
    x: np.ndarray,
    seasonal: np.ndarray,
    s: int,
    e: int,
    sigma: float,
    rng: np.random.Generator,
    *,
    max_drop: float,
    upward_only: bool,
) -> None:
    n = e - s
    sign = 1.0 if upward_only or rng.random() < 0.5 else -1.0

    def offset(size: float, direction: float) -> float:
        return size if direction > 0 else -min(size, max_drop)

    if kind == "spike":
        x[s:e] += rng.uniform(6.0, 10.0) * sigma
    elif kind == "dip":
        x[s:e] += offset(rng.uniform(6.0, 10.0) * sigma, -1.0)
    elif kind == "level_shift":
        x[s:e] += offset(rng.uniform(4.0, 7.0) * sigma, sign)
    elif kind == "drift":
        # Slow ramp to the peak at 80 % of the span, then back: a leak that gets fixed.
        peak = max(1, int(round(0.8 * n)))
        ramp = np.concatenate([np.linspace(0.0, 1.0, peak + 1)[1:], np.linspace(1.0, 0.0, n - peak + 1)[1:]])
        x[s:e] += offset(rng.uniform(8.0, 12.0) * sigma, sign) * ramp
    elif kind == "variance":
        x[s:e] += rng.normal(0.0, np.sqrt(15.0) * sigma, n)  # noise std x4 overall
    elif kind == "stuck":
        x[s:e] = x[s - 1]
    elif kind == "seasonality_break":
        x[s:e] += seasonal[s:e].mean() - seasonal[s:e]
    else:  # pragma: no cover - kinds are validated
        raise InvalidParameterError(f"kinds: unknown anomaly kind {kind!r}")
