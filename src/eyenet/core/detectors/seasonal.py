"""Seasonal baseline: how far a value is from what this phase of the series' cycle looked like.

Operational metrics repeat (hourly jobs, daily traffic, weekly load) or sit
around a level. ``fit`` looks for the cycle in the training data: the lag
``period_`` whose lag-correlation (Pearson, over at least ``min_overlap`` of
the data) is a local peak above ``min_corr`` — the first such peak, unless a
later one is clearly stronger (its multiples are peaks too). The value
expected at position ``i`` is the mean of the values one, two, ...
``cycles`` periods earlier (those that exist); a series without a cycle
expects its training median. The raw score is ``|x - expected| / scale_``
with ``scale_`` the mean absolute miss on the training data.

Averaging several past cycles makes the baseline robust to noise and to one
odd day, and a drift or level change shows as a sustained miss, which a
one-step forecaster (it follows the last few values) soon stops seeing.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from eyenet.core.detectors.base import Detector, interval

_TINY = 1e-12
#: a later correlation peak replaces the first one only when stronger by this much
_PEAK_MARGIN = 0.05


def _fraction(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < v < 1.0


_fraction.__doc__ = "a number in (0, 1)"


def lag_correlations(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Pearson correlation of ``x[l:]`` with ``x[:-l]`` for ``l = 0 .. max_lag`` (NaN where undefined)."""
    out = np.full(max_lag + 1, np.nan)
    for lag in range(1, max_lag + 1):
        a = x[lag:] - x[lag:].mean()
        b = x[:-lag] - x[:-lag].mean()
        d = float(np.sqrt((a @ a) * (b @ b)))
        if d > _TINY * max(1.0, float(np.abs(x).max())) ** 2:
            out[lag] = float(a @ b) / d
    return out


def find_period(x: np.ndarray, *, min_period: int = 4, min_corr: float = 0.5, min_overlap: float = 0.25) -> int:
    """The series' cycle length in steps, or 0 when no lag correlates well enough."""
    n = len(x)
    overlap = max(int(n * min_overlap), 16)
    max_lag = n - overlap
    if max_lag <= min_period:
        return 0
    c = np.nan_to_num(lag_correlations(x, max_lag + 1), nan=-1.0)
    best = 0
    for lag in range(min_period, max_lag + 1):
        if c[lag] > min_corr and c[lag] > c[lag - 1] and c[lag] >= c[lag + 1]:
            if not best or c[lag] > c[best] + _PEAK_MARGIN:
                best = lag
    return best


class Seasonal(Detector):
    """|x - mean of the same phase over the last ``cycles`` periods| / typical miss.

    ``period``: cycle length in steps, 0 = find it in ``fit``; ``cycles``:
    past periods averaged into the expected value; ``min_period``,
    ``min_corr``, ``min_overlap``: how a cycle is found (see module doc).
    Learned: ``period_`` (0 = no cycle), ``center_`` (training median) and
    ``scale_``. The first ready score is at index ``period_`` (a series
    without a cycle is ready at once); up to ``cycles * period_`` earlier
    points are used, so a stream keeps that many (:attr:`context`).
    """

    family = "seasonal"
    expects = True
    _constraints = {
        "period": interval(0, 100_000, integer=True),
        "cycles": interval(1, 100, integer=True),
        "min_period": interval(2, 100_000, integer=True),
        "min_corr": _fraction,
        "min_overlap": _fraction,
    }

    def __init__(
        self,
        *,
        period: int = 0,
        cycles: int = 10,
        min_period: int = 4,
        min_corr: float = 0.5,
        min_overlap: float = 0.25,
    ) -> None:
        self.period = period
        self.cycles = cycles
        self.min_period = min_period
        self.min_corr = min_corr
        self.min_overlap = min_overlap

    @property
    def _period(self) -> int:
        return int(self.period_) if self.is_fitted else int(self.period)

    @property
    def min_history(self) -> int:
        p = self._period
        return p + 1 if p else 1

    @property
    def context(self) -> int:
        p = self._period
        return int(self.cycles) * p + 1 if p else 1

    @property
    def min_fit(self) -> int:
        return max(2 * int(self.period), 4 * int(self.min_period), 32) + self._min_fit_extra

    def _expected(self, x: np.ndarray) -> np.ndarray:
        """Expected value at every position of ``x`` (NaN before the first full period)."""
        p = int(self.period_)
        if not p:
            return np.full(len(x), self.center_)
        total = np.zeros(len(x))
        count = np.zeros(len(x))
        for j in range(1, int(self.cycles) + 1):
            lag = j * p
            if lag >= len(x):
                break
            total[lag:] += x[:-lag]
            count[lag:] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def _fit(self, x: np.ndarray) -> None:
        if int(self.period):
            self.period_ = int(self.period)
        else:
            self.period_ = find_period(
                x, min_period=int(self.min_period), min_corr=float(self.min_corr), min_overlap=float(self.min_overlap)
            )
        self.center_ = float(np.median(x))
        miss = np.abs(x - self._expected(x))
        miss = miss[np.isfinite(miss)]
        spread = float(np.subtract(*np.percentile(x, [75, 25])))
        floor = max(1e-3 * spread, 1e-6 * abs(self.center_), _TINY)
        self.scale_ = max(float(miss.mean()) if len(miss) else 0.0, floor)

    @property
    def raw_unit(self) -> float | None:
        return float(self.scale_) if self.is_fitted else None

    def _score(self, x: np.ndarray) -> np.ndarray:
        raw = np.abs(x - self._expected(x)) / self.scale_
        return raw[self.min_history - 1 :]

    def score_many(self, windows: list[np.ndarray], n_new: list[int]) -> list[np.ndarray]:
        """Windows of one new point each, grouped by length, scored as matrices (the same sums in
        the same order as :meth:`_expected`, so the same numbers); the rest one by one."""
        if not self.is_fitted:
            return super().score_many(windows, n_new)  # raises NotFittedError
        return self._last_many(windows, n_new, lambda x, e: np.abs(x - e) / self.scale_,
                               lambda w, n: self.score(w)[len(w) - n :])

    def expected_many(self, windows: list[np.ndarray], n_new: list[int]) -> list[np.ndarray]:
        """The mean of the same phase over the last ``cycles`` periods at each new point."""
        if not self.is_fitted:
            return super().expected_many(windows, n_new)
        return self._last_many(windows, n_new, lambda x, e: e,
                               lambda w, n: self._expected(np.asarray(w, dtype=float))[len(w) - n :])

    def _last_many(self, windows: list[np.ndarray], n_new: list[int], last: Any, each: Any) -> list[np.ndarray]:
        """``last(values, expected)`` at the last point of the windows of one new point that are long
        enough, as arrays over windows of the same length; ``each(window, n)`` for the others."""
        out: list[np.ndarray | None] = [None] * len(windows)
        by_length: dict[int, list[int]] = {}
        for i, (w, n) in enumerate(zip(windows, n_new)):
            if n == 1 and len(w) >= self.min_history:
                by_length.setdefault(len(w), []).append(i)
            else:
                out[i] = each(w, n)
        p = int(self.period_)
        for length, rows in by_length.items():
            x = np.stack([np.asarray(windows[i], dtype=float) for i in rows])
            if p:
                lags = [j * p for j in range(1, int(self.cycles) + 1) if j * p < length]
                total = np.zeros(len(rows))
                for lag in lags:
                    total += x[:, length - 1 - lag]
                expected = total / len(lags)
            else:
                expected = np.full(len(rows), self.center_)
            got = last(x[:, -1], expected)
            for k, i in enumerate(rows):
                out[i] = got[k : k + 1]
        return out  # type: ignore[return-value]

    def _state(self) -> dict[str, np.ndarray]:
        return {"params": np.array([self.period_, self.center_, self.scale_], dtype=float)}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        p, c, s = (float(v) for v in state["params"])
        self.period_, self.center_, self.scale_ = int(p), c, s
