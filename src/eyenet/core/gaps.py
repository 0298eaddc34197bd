"""Gaps in a stream: missing values and missing timestamps, imputed for the model and marked.

Metric streams have holes: a value that is null (NaN) and a scrape that never
came (a timestamp missing from the series' grid). :func:`fill` turns the new
points of one series into what the model scores: finite values, each marked
real or imputed. Imputed points give the model its context; they are never
raised as anomalies. The rules, in the order they apply:

1. **Repeats are dropped.** A point whose timestamp is at or before the last
   applied one (the state's ``last_ts``, then each kept point's) came out of
   order or twice (a client retrying a request): it is dropped and counted.
2. **The step** (the series' sampling interval) is learned from its intervals:
   the first intervals seen set it to their median; after that each interval,
   clipped to within a factor ``1 + tolerance`` of the step, moves it by
   :data:`STEP_WEIGHT` of the difference (an exponential average). So one odd
   interval (a gap, a burst) moves the step by ``STEP_WEIGHT * tolerance`` (5 %)
   at most, which the next regular intervals take back, and a wrong first guess
   or a changed scrape interval is corrected within a few dozen points. The
   gaps of one call are judged against the step known when the call starts.
3. **Missing timestamps.** An interval ``dt > (1 + tolerance) * step`` is a gap
   of ``k = round(dt / step) - 1`` missing points. If ``k <= max_fill`` they are
   inserted, spaced evenly between the two real timestamps (the step grid that
   fits both ends), on the straight line between the value before the gap and
   the value after it: both are known when the later point arrives, so scoring
   stays causal. A longer gap is not filled: the points after it form a new
   segment with ``restart=True``, which the caller scores from a fresh state
   (the warm-up starts again).
4. **Missing values.** A NaN takes the value before it (carried forward: the
   previous point's, or the state's ``last_value``). Nothing is carried across
   a gap over ``max_fill``: a NaN with no value before it in its segment (a new
   series, or right after a restart) cannot be imputed, and is dropped and
   counted like a repeat (a gap right after it starts the segment, unfilled).

Without timestamps only rule 4 applies. A point sent without a timestamp sets
``last_ts`` to NaN; the step stays as it was. One call inserts at most
:data:`MAX_INSERTED` points, so timestamps far apart cannot make the server
allocate without bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from eyenet.core.errors import InvalidInputError, InvalidParameterError

#: weight of one interval in the learned step: the step averages roughly the last 1 / STEP_WEIGHT intervals
STEP_WEIGHT = 0.1
#: points one call may insert into timestamp gaps at most, whatever ``max_fill`` allows
MAX_INSERTED = 100_000


@dataclass(frozen=True)
class GapPolicy:
    """Insert at most ``max_fill`` points into one gap (a longer gap restarts the warm-up); an
    interval over ``1 + tolerance`` steps is a gap."""

    max_fill: int = 60
    tolerance: float = 0.5

    def __post_init__(self) -> None:
        self.validate()  # once, where a policy is made: fill() runs for every stream request

    def validate(self) -> None:
        if not (isinstance(self.max_fill, int) and self.max_fill >= 0):
            raise InvalidParameterError(f"gap max_fill={self.max_fill!r} must be an integer >= 0")
        if not 0.0 < self.tolerance < math.inf:
            raise InvalidParameterError(f"gap tolerance={self.tolerance!r} must be a finite number > 0")


@dataclass(frozen=True)
class Segment:
    """Consecutive points to score from one state."""

    values: np.ndarray  # finite float64: what the model scores
    timestamps: np.ndarray | None  # unix seconds of every value (None: the client sent none)
    imputed: np.ndarray  # bool per value: filled in (a missing value, or a missing timestamp)
    restart: bool  # a gap over max_fill came before it: score it from a fresh state


@dataclass(frozen=True)
class Filled:
    """What :func:`fill` made of a call's points, and the state's gap fields after them."""

    segments: list[Segment]  # usually one; none when no point could be applied
    dropped: int  # points not applied: repeats (rule 1) and missing values with nothing to carry (rule 4)
    last_ts: float
    step: float
    last_value: float


_NONE_IMPUTED = np.zeros(1, dtype=bool)
_NONE_IMPUTED.flags.writeable = False


def fill(
    values: ArrayLike,
    timestamps: ArrayLike | None = None,
    *,
    last_ts: float = math.nan,
    step: float = math.nan,
    last_value: float = math.nan,
    policy: GapPolicy = GapPolicy(),
) -> Filled:
    """The new points of one series (``values``, NaN = missing; ``timestamps`` in unix seconds, or
    None) as segments to score, given the state's ``last_ts``, ``step`` and ``last_value``; the
    rules are in the module docstring.

    Raises :class:`InvalidInputError` on an infinity, non-finite timestamps, a length mismatch, or
    gaps that would insert more than :data:`MAX_INSERTED` points.
    """
    last_ts, step, last_value = float(last_ts), float(step), float(last_value)
    v = np.asarray(values, dtype=float)
    if timestamps is None and v.shape == (1,) and math.isfinite(v[0]):  # one point, nothing to do: the hot path
        return Filled([Segment(v, None, _NONE_IMPUTED, False)], 0, math.nan, step, float(v[0]))
    finite = np.isfinite(v)
    if v.ndim != 1:
        raise InvalidInputError(f"values: expected one series, got shape {v.shape}")
    if not finite.all() and np.isinf(v).any():
        raise InvalidInputError(f"values[{int(np.argmax(np.isinf(v)))}]: an infinity cannot be imputed")
    t = _seconds(timestamps, len(v))
    dt = _intervals(t, last_ts)
    dropped = 0
    if (dt <= 0).any():  # rule 1: keep a point only if it is later than every point before it
        latest = np.maximum.accumulate(np.concatenate(([-math.inf if math.isnan(last_ts) else last_ts], t)))
        keep = t > latest[:-1]
        dropped = len(t) - int(keep.sum())
        v, t, finite = v[keep], t[keep], finite[keep]
        dt = _intervals(t, last_ts)
    seen = dt[np.isfinite(dt)]
    if math.isfinite(step) and step > 0:
        base, new_step = step, _averaged(step, seen, policy.tolerance)
    else:
        base = new_step = float(np.median(seen)) if len(seen) else math.nan
    gap = dt > (1 + policy.tolerance) * base
    timed = timestamps is not None
    if len(v) and finite.all() and not gap.any():  # the common case: nothing to impute
        segment = Segment(v, t if timed else None, np.zeros(len(v), dtype=bool), False)
        return Filled([segment], dropped, float(t[-1]), new_step, float(v[-1]))
    k = np.where(gap, np.rint(dt / base) - 1, 0.0)  # points missing before each point
    segments, unfilled, last_ts, last_value = _impute(v, t, k, last_ts, last_value, policy.max_fill, timed)
    return Filled(segments, dropped + unfilled, last_ts, new_step, last_value)


def _seconds(timestamps: ArrayLike | None, n: int) -> np.ndarray:
    """The timestamps as float seconds (all NaN when there are none)."""
    if timestamps is None:
        return np.full(n, math.nan)
    t = np.asarray(timestamps, dtype=float)
    if t.shape != (n,):
        raise InvalidInputError(f"timestamps: shape {t.shape} for {n} values")
    if not np.isfinite(t).all():
        raise InvalidInputError(f"timestamps[{int(np.argmax(~np.isfinite(t)))}]: not a finite number")
    return t


def _intervals(t: np.ndarray, last_ts: float) -> np.ndarray:
    """The interval before each point, the first one's from ``last_ts`` (NaN: unknown)."""
    return t - np.concatenate(([last_ts], t[:-1]))  # np.diff(prepend=) costs ten times more on one point


def _averaged(step: float, intervals: np.ndarray, tolerance: float) -> float:
    """``step`` after the exponential average takes in ``intervals`` (oldest first), each clipped to
    within a factor ``1 + tolerance`` of ``step``."""
    if not len(intervals):
        return step
    d = np.minimum(np.maximum(intervals, step / (1 + tolerance)), step * (1 + tolerance))
    weights = (1 - STEP_WEIGHT) ** np.arange(len(d) - 1, -1, -1)  # the newest interval weighs most
    return step + STEP_WEIGHT * float(weights @ (d - step))


def _impute(
    v: np.ndarray, t: np.ndarray, k: np.ndarray, last_ts: float, last_value: float, max_fill: int, timed: bool
) -> tuple[list[Segment], int, float, float]:
    """Rules 3 and 4 on points in order (``k``: points missing before each): the segments, the count
    of missing values that could not be imputed, and the last applied timestamp and value."""
    restart = k > max_fill
    # the state's point comes first, so that the first new point has a point before it like any other
    ts, vs = np.concatenate(([last_ts], t)), np.concatenate(([last_value], v))
    pos = np.arange(len(vs))
    start = np.maximum.accumulate(np.where(np.concatenate(([False], restart)), pos, 0))  # of each one's segment
    src = np.maximum.accumulate(np.where(np.isnan(vs), -1, pos))  # the last point with a value, at or before
    ok = src >= start  # a value to carry within its own segment
    carried = vs[src]  # where src is -1 the point is not ok, and dropped
    inserts = np.where((k >= 1) & ~restart & ok[:-1], k, 0).astype(int)
    if inserts.sum() > MAX_INSERTED:
        raise InvalidInputError(f"timestamps: the gaps would insert {int(inserts.sum())} points, "
                                f"at most {MAX_INSERTED} per request")
    per = np.where(ok[1:], inserts + 1, 0)  # output points per new point: the inserted ones, then itself
    owner = np.repeat(pos[1:], per)
    group = per[owner - 1]
    j = np.arange(len(owner)) - np.repeat(np.cumsum(per) - per, per) + 1  # 1 .. group within each group
    real, frac = j == group, j / group
    out_t = np.where(real, ts[owner], ts[owner - 1] + frac * (ts[owner] - ts[owner - 1]))
    out_v = np.where(real, carried[owner], carried[owner - 1] + frac * (carried[owner] - carried[owner - 1]))
    imputed = ~real | np.isnan(vs[owner])
    unfilled = len(v) - int(ok[1:].sum())
    if not len(owner):
        return [], unfilled, last_ts, last_value
    seg = np.cumsum(restart)[owner - 1]
    cuts = np.flatnonzero(np.diff(seg)) + 1
    parts = zip(np.split(out_v, cuts), np.split(out_t, cuts), np.split(imputed, cuts), seg[np.r_[0, cuts]])
    segments = [Segment(pv, pt if timed else None, pi, bool(s > 0)) for pv, pt, pi, s in parts]
    return segments, unfilled, float(out_t[-1]), float(out_v[-1])
