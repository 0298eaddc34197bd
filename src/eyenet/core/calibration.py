"""Raw score -> common [0, 1] scale, and the running rank of a score in its own history.

Two steps, composed by :class:`eyenet.core.model.AnomalyModel`:

* :class:`TailCalibrator` is fitted once, on held-out raw scores of one
  detector. It turns a raw score into the log-probability of seeing a score at
  least that high (empirical body, exponential tail fitted with scipy beyond a
  high quantile), so that every family speaks the same unit.
* :class:`RunningRank` runs over the stream of calibrated scores: it ranks
  each score against the score's own long-run distribution (the series' last
  few thousand scores) and keeps only scores that are news. Scores of a noisy
  metric run high all the time; what matters is a score that is high *for
  this series*. This keeps alarms rare on noisy series and still sensitive
  on quiet ones, and turns an incident into one alarm at its onset.

:func:`holdout_split` and :func:`held_out_start` say which part of a training
series a detector learns from and which held-out scores calibrate it (for a
model and for each ensemble member alike).
"""
from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from eyenet.core.errors import InvalidParameterError, NotEnoughDataError

if TYPE_CHECKING:
    from eyenet.core.detectors.base import Detector

#: tail probability that maps to a calibrated score of 1.0 (10 ** -DECADES)
DECADES = 16.0
#: up to this many new scores, :meth:`RunningRank.rank` and :meth:`RunningRank.novelty`
#: scan the history with numpy instead of sorting it (the one-point stream step)
FEW = 8


def check_holdout(holdout: float) -> None:
    """Refuse a held-out fraction that leaves too little to fit or to calibrate on."""
    if not 0.05 <= holdout <= 0.8:
        raise InvalidParameterError(f"holdout={holdout} must be in [0.05, 0.8]")


def holdout_split(n: int, holdout: float, det: "Detector") -> int:
    """Where the fit part of ``n`` training points ends: the trailing ``holdout`` fraction is kept
    out of ``det``'s fit, for calibration on scores of unseen data."""
    n_hold = int(round(n * holdout))
    split = n - n_hold
    if split < det.min_fit or n_hold < 10:
        raise NotEnoughDataError(
            f"{det.family}: training needs at least {det.min_fit + max(10, det.min_fit // 2)} points "
            f"({det.min_fit} to fit, the rest held out for calibration), got {n}"
        )
    return split


def held_out_start(det: "Detector", split: int) -> int:
    """First point to score so that the scores from ``split`` on have all the history they may use."""
    return max(split - max(det.context, det.min_history) + 1, 0)


@dataclass
class TailCalibrator:
    """Maps raw scores to ``-log10(P(score >= raw)) / DECADES`` clipped to [0, 1]."""

    tail_quantile: float = 0.9
    body_: np.ndarray | None = None  # sorted held-out scores
    threshold_: float = 0.0  # raw score where the tail starts
    tail_scale_: float = 1.0  # exponential tail scale (mean excess)

    def fit(self, raw: np.ndarray) -> "TailCalibrator":
        if not 0.5 <= self.tail_quantile < 1.0:
            raise InvalidParameterError(f"tail_quantile={self.tail_quantile} must be in [0.5, 1)")
        r = np.sort(np.asarray(raw, dtype=float)[np.isfinite(raw)])
        if len(r) < 10:
            raise NotEnoughDataError(f"calibration needs at least 10 ready scores, got {len(r)}")
        self.body_ = r
        self.threshold_ = float(np.quantile(r, self.tail_quantile))
        excess = r[r > self.threshold_] - self.threshold_
        spread = float(r[-1] - r[0])
        if len(excess) >= 2:
            _, scale = stats.expon.fit(excess, floc=0.0)
        else:
            scale = spread / 10
        self.tail_scale_ = float(max(scale, 1e-3 * spread, 1e-12))
        return self

    def tail_probability(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=float)
        body = self.body_
        n = len(body)
        # empirical survival with a +1 so nothing seen is impossible
        p_body = (n - np.searchsorted(body, raw, side="left") + 1) / (n + 1)
        with np.errstate(over="ignore", invalid="ignore"):
            p_tail = (1 - self.tail_quantile) * np.exp(-(raw - self.threshold_) / self.tail_scale_)
            p = np.where(raw > self.threshold_, np.minimum(p_body, p_tail), p_body)
        return np.where(np.isfinite(raw), np.clip(p, 1e-300, 1.0), np.nan)

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated scores in [0, 1]; NaN (not ready) stays NaN."""
        raw = np.asarray(raw, dtype=float)
        if raw.shape == (1,):
            return np.array([self.transform_one(float(raw[0]))])
        with np.errstate(invalid="ignore"):
            return np.clip(-np.log10(self.tail_probability(raw)) / DECADES, 0.0, 1.0)

    def transform_one(self, raw: float) -> float:
        """:meth:`transform` of one score without arrays (the real-time path), equal bit for bit.

        The same operations in the same order on floats; ``exp`` and ``log10``
        are numpy's, as in the array path."""
        if not math.isfinite(raw):
            return math.nan
        n = len(self.body_)
        p = (n - int(np.searchsorted(self.body_, raw, side="left")) + 1) / (n + 1)
        if raw > self.threshold_:
            p = min(p, (1 - self.tail_quantile) * float(np.exp(-(raw - self.threshold_) / self.tail_scale_)))
        p = min(max(p, 1e-300), 1.0)
        return min(max(float(-np.log10(p)) / DECADES, 0.0), 1.0)

    def raw_at(self, level: float) -> float:
        """The smallest raw score whose calibrated score reaches ``level`` (in (0, 1]): the inverse of
        :meth:`transform`, which is non-decreasing, found by bisection."""
        p = 10.0 ** (-level * DECADES)
        q = 1.0 - self.tail_quantile
        hi = self.threshold_ + self.tail_scale_ * math.log(q / p) if p < q else float(self.body_[-1])
        lo = float(self.body_[0])
        hi = max(hi, lo)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if self.transform_one(mid) >= level:
                hi = mid
            else:
                lo = mid
        return hi

    def state(self) -> dict[str, np.ndarray]:
        return {
            "body": self.body_,
            "params": np.array([self.tail_quantile, self.threshold_, self.tail_scale_]),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "TailCalibrator":
        q, t, s = (float(v) for v in state["params"])
        return cls(tail_quantile=q, body_=np.asarray(state["body"], dtype=float), threshold_=t, tail_scale_=s)


@dataclass(frozen=True)
class RunningRank:
    """Where each score stands in the stream's own recent history, and whether it is news.

    ``rank``: ``-log10`` of the empirical probability that one of the previous
    ``history`` calibrated scores was at least as high, scaled by
    ``log10(history + 1)`` into [0, 1]. A score that is high for *this* series
    ranks high; a noisy series whose scores always run high does not page.
    ``score``: the rank where it exceeds every rank of the previous ``suppress``
    points, else 0 — one incident raises one alarm, at its onset. Until
    ``learning`` scores have been seen the output is NaN (not ready).
    """

    history: int = 5000
    learning: int = 50
    suppress: int = 500

    def validate(self) -> None:
        if not (10 <= self.learning <= self.history) or self.suppress < 0:
            raise InvalidParameterError(
                f"rank needs 10 <= learning <= history and suppress >= 0, got {asdict(self)}"
            )

    def top(self, seen: int) -> float:
        """The rank of a score beyond all of ``seen`` remembered scores: the highest a point can
        rank until more are remembered (computed as :meth:`rank` does, to the last bit)."""
        m = min(max(int(seen), 0), self.history)
        return -math.log10(1 / (m + 1)) / math.log10(self.history + 1)  # no score at least as high

    def rank(self, scores: np.ndarray, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ranks of ``scores`` given the previous finite scores ``history`` (oldest first);
        returns ``(ranks, new history)``. NaN inputs give NaN and are not remembered."""
        s = np.asarray(scores, dtype=float)
        h = np.asarray(history, dtype=float)[-self.history :]
        seen = np.concatenate((h, s[np.isfinite(s)]))  # every remembered score, oldest first
        if len(s) <= FEW:
            return self._rank_few(s, seen, len(h)), seen[-self.history :]
        ranked = np.sort(h).tolist()  # numpy sorts ~10x faster than sorted() on a list
        oldest = 0  # index in `seen` of the oldest score still in `ranked`
        scale = math.log10(self.history + 1)
        out = np.full(len(s), np.nan)
        for i, v in enumerate(s.tolist()):
            if v != v:  # NaN: not ready
                continue
            m = len(ranked)
            if m >= self.learning:
                out[i] = -math.log10((m - bisect.bisect_left(ranked, v) + 1) / (m + 1)) / scale
            bisect.insort(ranked, v)
            if m + 1 > self.history:
                del ranked[bisect.bisect_left(ranked, seen[oldest])]
                oldest += 1
        return out, seen[-self.history :]

    def _rank_few(self, s: np.ndarray, seen: np.ndarray, m: int) -> np.ndarray:
        """:meth:`rank` of a few scores without sorting: count the remembered scores at least
        as high (``m - bisect_left`` of the sorted history) in ``seen[oldest : oldest + m]``."""
        scale = math.log10(self.history + 1)
        out = np.full(len(s), np.nan)
        oldest = 0
        for i, v in enumerate(s.tolist()):
            if v != v:  # NaN: not ready
                continue
            if m >= self.learning:
                at_least = int(np.count_nonzero(seen[oldest : oldest + m] >= v))
                out[i] = -math.log10((at_least + 1) / (m + 1)) / scale
            if m + 1 > self.history:
                oldest += 1
            else:
                m += 1
        return out

    def novelty(self, ranks: np.ndarray, recent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keep a rank only where it beats every rank of the previous ``suppress`` ready
        points (else 0); returns ``(scores, new recent ranks)``."""
        if not self.suppress:
            return np.asarray(ranks, dtype=float), np.empty(0)
        if len(ranks) <= FEW:  # a few points: no deque of the whole recent window
            q = np.asarray(recent, dtype=float)[-self.suppress :]
            out = np.full(len(ranks), np.nan)
            for i, r in enumerate(np.asarray(ranks, dtype=float).tolist()):
                if r != r:
                    continue
                out[i] = r if (not len(q) or r > q.max()) else 0.0
                q = np.append(q, r)[-self.suppress :]
            return out, q
        q = deque(np.asarray(recent, dtype=float)[-self.suppress :].tolist(), maxlen=self.suppress)
        out = np.full(len(ranks), np.nan)
        for i, r in enumerate(np.asarray(ranks, dtype=float).tolist()):
            if r != r:
                continue
            out[i] = r if (not q or r > max(q)) else 0.0
            q.append(r)
        return out, np.asarray(q, dtype=float)
