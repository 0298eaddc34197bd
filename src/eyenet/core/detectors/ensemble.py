"""Ensemble over calibrated member scores.

Each member is a detector with its own calibrator fitted on held-out data, so
its output is on the common [0, 1] scale; the ensemble combines them by
``mean`` (weighted by each member's optional ``weight``), ``max``, ``weighted``
mean (explicit ``weights``) or ``vote`` (fraction of members at or above
``vote_threshold``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from eyenet.core import detectors
from eyenet.core.calibration import TailCalibrator, check_holdout, held_out_start, holdout_split
from eyenet.core.detectors.base import Detector, as_series, check_labels, normal_rows, one_of
from eyenet.core.errors import InvalidParameterError

#: a seasonal baseline (distance from the same phase of past cycles, or from the usual level)
#: and a one-step forecaster (distance from what the last values predict), the baseline
#: weighted 3:1; chosen on the NAB subset in bench/RESULTS.md, where it beats each member.
#: The forecaster alarms on its own on a series it predicts to within 0.15 of its spread
#: (``solo_below``): there a spike or a short burst is news the baseline averages away, while on
#: a noisy series its misses are not (measured on the NAB subset and ``eyenet demo``, RESULTS.md)
DEFAULT_MEMBERS: tuple[dict[str, Any], ...] = (
    {"family": "seasonal", "params": {}, "weight": 3.0},
    {"family": "lstm", "params": {}, "weight": 1.0, "solo_below": 0.15},
)


def _in_order(values: list[float]) -> float:
    """The sum of fewer than 8 numbers as numpy adds them along a row: in order."""
    total = 0.0
    for v in values:
        total += v
    return total


def _weight_ok(w: Any) -> bool:
    return isinstance(w, (int, float)) and not isinstance(w, bool) and 0 <= w < float("inf")


def _members_ok(v: Any) -> bool:
    return v is None or isinstance(v, (list, tuple)) and len(v) >= 1 and all(
        isinstance(m, dict)
        and isinstance(m.get("family"), str)
        and m["family"] != "ensemble"
        and _weight_ok(m.get("weight", 1.0))
        and isinstance(m.get("solo", False), bool)
        and (m.get("solo_below") is None or _weight_ok(m["solo_below"]) and m["solo_below"] > 0)
        for m in v
    ) and sum(float(m.get("weight", 1.0)) for m in v) > 0


_members_ok.__doc__ = (
    "None (the default members) or a non-empty list of {'family': name, 'params': {...}, 'weight': w, "
    "'solo': false, 'solo_below': null} (weight optional, default 1, non-negative with a positive sum; solo: the "
    "member may alarm on its own; solo_below: a positive number, the member may alarm on its own where its "
    "validation error, in units of the series' spread, is below it; no nested ensembles)"
)


def _weights_ok(v: Any) -> bool:
    return v is None or (isinstance(v, (list, tuple)) and all(isinstance(w, (int, float)) and w >= 0 for w in v))


_weights_ok.__doc__ = "None or a list of non-negative numbers, one per member"


def _fraction(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < v < 1.0


_fraction.__doc__ = "a number in (0, 1)"


@dataclass
class Member:
    """A fitted member: its detector and the calibrator fitted on its scores of held-out data
    (``reference``), which puts its raw scores on the common [0, 1] scale."""

    detector: Detector
    calibrator: TailCalibrator
    reference: np.ndarray

    @classmethod
    def fit(cls, det: Detector, x: np.ndarray, split: int, labels: np.ndarray | None = None) -> "Member":
        """Fit ``det`` on ``x[:split]`` (a supervised one with ``labels``) and its calibrator on its
        scores of ``x[split:]`` outside labelled anomalies."""
        det.fit_split(x, split, labels)
        start = held_out_start(det, split)
        held = det.score(x[start:])[split - start :]
        held = held[normal_rows(labels, split, len(held))]
        return cls(det, TailCalibrator().fit(held), held[np.isfinite(held)])


class Ensemble(Detector):
    """Combines the calibrated scores of member detectors (mean, max, weighted, vote)."""

    family = "ensemble"
    _constraints = {
        "members": _members_ok,
        "combine": one_of("mean", "max", "weighted", "vote"),
        "weights": _weights_ok,
        "vote_threshold": _fraction,
        "holdout": _fraction,
    }

    def __init__(
        self,
        *,
        members: list[dict[str, Any]] | None = None,
        combine: str = "mean",
        weights: list[float] | None = None,
        vote_threshold: float = 0.5,
        holdout: float = 0.3,
    ) -> None:
        self.members = members
        self.combine = combine
        self.weights = weights
        self.vote_threshold = vote_threshold
        self.holdout = holdout

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.combine == "weighted":
            if self.weights is None or len(self.weights) != len(self.member_configs) or sum(self.weights) <= 0:
                raise InvalidParameterError(
                    f"ensemble: combine='weighted' needs {len(self.member_configs)} weights with a positive sum, got {self.weights}"
                )

    def _build(self) -> list[Detector]:
        """New, unfitted member detectors."""
        return [detectors.from_dict({"family": m["family"], "params": m.get("params") or {}}) for m in self.member_configs]

    @property
    def member_weights(self) -> np.ndarray:
        """Each member's weight in ``mean`` (the members' ``weight`` keys, default 1)."""
        return np.array([float(m.get("weight", 1.0)) for m in self.member_configs])

    @property
    def member_configs(self) -> list[dict[str, Any]]:
        return [dict(m) for m in (self.members if self.members is not None else DEFAULT_MEMBERS)]

    @property
    def member_detectors(self) -> list[Detector]:
        """The members' detectors (fitted ones once fitted): a model ranks each one's scores."""
        fitted = getattr(self, "members_", None)
        return [m.detector for m in fitted] if fitted else self._build()

    @property
    def min_history(self) -> int:
        return max(d.min_history for d in self.member_detectors)

    @property
    def context(self) -> int:
        return max(d.context for d in self.member_detectors)

    @property
    def min_fit(self) -> int:
        need = max(d.min_fit for d in self.member_detectors)
        return int(np.ceil(need / (1 - self.holdout))) + 10

    @property
    def supervised(self) -> bool:  # type: ignore[override]
        """Whether a member learns from labels (then ``fit`` takes them); False for members that
        are not valid (``fit`` names what is wrong with them)."""
        return _members_ok(self.members) and any(
            detectors.get_class(m["family"]).supervised for m in self.member_configs)

    def _fit(self, x: np.ndarray) -> None:
        """Hold out the trailing ``holdout`` of ``x`` for the members' calibration."""
        check_holdout(self.holdout)
        dets = self._build()
        # the same split for every member; each checks it leaves enough on both sides, in order
        split = [holdout_split(len(x), self.holdout, d) for d in dets][0]
        self.members_ = [Member.fit(d, x, split, self._labels) for d in dets]

    def fit_split(self, values: Any, split: int, labels: np.ndarray | None = None) -> "Ensemble":
        """Fit every member's detector on ``values[:split]`` and its calibrator on its
        scores of ``values[split:]``: for a caller that holds out that tail itself, so
        members learn from all of the fit part instead of holding out a part of it again."""
        self._validate_params()
        x = as_series(values)
        y = None if labels is None else check_labels(labels, len(x))
        self.members_ = [Member.fit(d, x, split, y) for d in self._build()]
        self.fitted_ = True
        return self

    def member_raw(self, x: np.ndarray) -> np.ndarray:
        """Raw scores of every member, shape (len(x), members); NaN where a member is not ready."""
        return np.column_stack([m.detector.score(x) for m in self.members_])

    def calibrate_members(self, raw: np.ndarray, calibrator: TailCalibrator | None = None) -> np.ndarray:
        """Each member's raw scores through its own calibrator (``calibrator`` is not needed)."""
        return np.column_stack([m.calibrator.transform(raw[:, j]) for j, m in enumerate(self.members_)])

    @property
    def solo(self) -> list[int]:
        """The members that may alarm on their own: the combined score is at least the highest of
        their scores, so a confident member is not averaged away by the others. A member is solo with
        ``"solo": true``, or once fitted with ``"solo_below": e`` where its
        :attr:`~eyenet.core.detectors.base.Detector.validation_error` is below ``e`` (a forecaster on a
        series it predicts closely: its misses there are news)."""
        members = self.members if self.members is not None else DEFAULT_MEMBERS
        fitted = self.__dict__.get("members_")
        key = (id(members), len(members))
        hit = self.__dict__.get("_solo_cache")
        if hit is None or hit[0] != key or hit[1] is not fitted:  # the fitted members held: no id reused
            hit = (key, fitted, [j for j, m in enumerate(members) if m.get("solo") or self._predicts_closely(j, m, fitted)])
            self._solo_cache = hit
        return hit[2]

    @staticmethod
    def _predicts_closely(j: int, member: dict[str, Any], fitted: list[Member] | None) -> bool:
        below = member.get("solo_below")
        if below is None or not fitted or j >= len(fitted):
            return False
        error = fitted[j].detector.validation_error
        return error is not None and error < float(below)

    def combine_scores(self, s: np.ndarray) -> np.ndarray:
        """One score per row of a (points, members) matrix of [0, 1] scores."""
        out = self._combine_all(s)
        solo = self.solo
        if solo and self.combine != "max" and s.shape[1] == len(self.member_configs):
            out = np.maximum(out, s[:, solo].max(axis=1))
        return out

    def _combine_all(self, s: np.ndarray) -> np.ndarray:
        if self.combine == "max":
            return s.max(axis=1)
        if self.combine == "vote":
            return (s >= self.vote_threshold).mean(axis=1)
        if self.combine == "weighted":
            return (s * self._unit_weights()).sum(axis=1)  # not s @ w: BLAS rounds one row and many differently
        w = self._mean_weights(s.shape[1])
        if w is not None:
            return (s * np.asarray(w)).sum(axis=1)
        return s.mean(axis=1)

    def shares(self, s: np.ndarray) -> np.ndarray:
        """Each member's share of :meth:`combine_scores`: of a (weighted) mean, its weighted score over
        the sum (where a solo member's score exceeds the mean, the solo members at the top share it
        all); of a max, the members at the max; of a vote, the members that vote. Members left out
        (NaN) share nothing and the others' plain mean is what was combined (as in
        :meth:`eyenet.core.model.AnomalyModel.finish_stream`)."""
        s = np.asarray(s, dtype=float)
        if s.shape[0] == 1 and s.shape[1] < 8:  # one point: the real-time path, the same numbers without arrays
            return np.array([self._share_row(s[0].tolist())])
        out = np.full(s.shape, np.nan)
        if not s.size:
            return out
        present = np.isfinite(s)
        full = present.all(axis=1)
        z = np.where(present, s, 0.0)
        if self.combine == "max":
            part = (present & (z >= np.nanmax(np.where(present, s, -np.inf), axis=1, keepdims=True))).astype(float)
        elif self.combine == "vote":
            part = (present & (z >= self.vote_threshold)).astype(float)
        else:
            w = self._unit_weights() if self.combine == "weighted" else np.asarray(
                self._mean_weights(s.shape[1]) or np.ones(s.shape[1]))
            part = np.where(full[:, None], z * w, z)  # a member left out: the plain mean of the rest
            solo = self.solo
            if solo and s.shape[1] == len(self.member_configs):  # where a solo member's score won, it is the score
                mean = part.sum(axis=1)
                top = np.where(present[:, solo], z[:, solo], -np.inf).max(axis=1)
                won = full & (top > mean)
                at_top = np.zeros(s.shape, dtype=bool)
                at_top[:, solo] = present[:, solo] & (z[:, solo] >= top[:, None])
                part = np.where(won[:, None], at_top.astype(float), part)
        total = part.sum(axis=1, keepdims=True)
        even = present / np.maximum(present.sum(axis=1, keepdims=True), 1)  # all zero: equal shares
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(total > 0, part / np.where(total > 0, total, 1.0), even)
        out[~present] = np.nan
        out[~present.any(axis=1)] = np.nan
        return out

    def _share_row(self, s: list[float]) -> list[float]:
        """:meth:`shares` of one row of fewer than 8 members (numpy sums those in order), bit for bit."""
        n = len(s)
        present = [math.isfinite(v) for v in s]
        if not any(present):
            return [math.nan] * n
        z = [v if p else 0.0 for v, p in zip(s, present)]
        if self.combine == "max":
            top = max(v for v, p in zip(s, present) if p)
            part = [1.0 if p and v >= top else 0.0 for v, p in zip(z, present)]
        elif self.combine == "vote":
            part = [1.0 if p and v >= self.vote_threshold else 0.0 for v, p in zip(z, present)]
        else:
            full = all(present)
            w = self._unit_weights().tolist() if self.combine == "weighted" else self._mean_weights(n) or [1.0] * n
            part = [v * x for v, x in zip(z, w)] if full else z
            solo = self.solo
            if solo and n == len(self.member_configs):
                mean = _in_order(part)
                top = max(z[j] if present[j] else -math.inf for j in solo)
                if full and top > mean:
                    part = [1.0 if j in solo and present[j] and z[j] >= top else 0.0 for j in range(n)]
        total = _in_order(part)
        if total > 0:
            out = [v / total for v in part]
        else:
            k = sum(present)
            out = [p / k for p in present]
        return [v if p else math.nan for v, p in zip(out, present)]

    def _mean_weights(self, n: int) -> list[float] | None:
        """The members' weights in ``mean``, summing to 1, or None when they are all equal (a plain
        mean); cached, as it runs for every point scored."""
        members = self.members if self.members is not None else DEFAULT_MEMBERS
        key = (id(members), len(members), n)
        hit = self.__dict__.get("_weights_cache")
        if hit is None or hit[0] != key:
            w = np.array([float(m.get("weight", 1.0)) for m in members])
            hit = (key, (w / w.sum()).tolist() if len(w) == n and not np.allclose(w, w[0]) else None)
            self._weights_cache = hit
        return hit[1]

    def _unit_weights(self) -> np.ndarray:
        w = np.asarray(self.weights, dtype=float)
        return w / w.sum()

    def combine_raw(self, raw: np.ndarray) -> np.ndarray:
        """Ensemble score from members' raw scores; NaN until every member is ready."""
        if len(raw) == 1:
            return np.array([self.combine_one(raw[0].tolist())])
        s = self.calibrate_members(raw)
        out = np.full(len(s), np.nan)
        ok = np.isfinite(s).all(axis=1)
        out[ok] = self.combine_scores(s[ok])
        return out

    def combine_one(self, raw: list[float]) -> float:
        """:meth:`combine_raw` of one point (one raw score per member) without arrays,
        equal to it bit for bit: the real-time path."""
        return self.combine_row([m.calibrator.transform_one(r) for m, r in zip(self.members_, raw)])

    def combine_row(self, s: list[float]) -> float:
        """:meth:`combine_scores` of one row of [0, 1] scores, without arrays and equal to it
        bit for bit; NaN if any member is not ready."""
        if any(v != v for v in s):
            return math.nan
        solo = self.solo
        if solo and self.combine != "max" and len(s) == len(self.member_configs):
            return max(self._combine_row(s), max(s[j] for j in solo))
        return self._combine_row(s)

    def _combine_row(self, s: list[float]) -> float:
        if self.combine == "max":
            return max(s)
        if self.combine == "vote":
            return sum(v >= self.vote_threshold for v in s) / len(s)
        if len(s) >= 8:  # numpy sums 8 or more numbers pairwise
            return float(self._combine_all(np.array([s]))[0])
        w = self._mean_weights(len(s))
        weighted = self.combine == "weighted" or w is not None
        if self.combine == "weighted":
            s = [v * x for v, x in zip(s, self._unit_weights().tolist())]
        elif weighted:  # a mean with member weights
            s = [v * x for v, x in zip(s, w)]
        total = s[0]  # in order, as numpy sums fewer than 8 numbers
        for v in s[1:]:
            total += v
        return total if weighted else total / len(s)

    def _score(self, x: np.ndarray) -> np.ndarray:
        return self.combine_raw(self.member_raw(x))[self.min_history - 1 :]

    def score_last(self, window: Any) -> float:
        """The real-time path: each member scores only its own last window."""
        if not self.is_fitted:
            return super().score_last(window)  # raises NotFittedError
        x = as_series(window)
        h = self.min_history
        if len(x) < h:
            return float("nan")
        x = x[-h:]
        return self.combine_one([m.detector.score_last(x) for m in self.members_])

    def _state(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, m in enumerate(self.members_):
            for k, v in m.detector._state().items():
                out[f"m{i}.det.{k}"] = v
            for k, v in m.calibrator.state().items():
                out[f"m{i}.cal.{k}"] = v
            out[f"m{i}.reference"] = m.reference[None, :]  # one row, as artifacts have always held it
        return out

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        members = []
        for i, det in enumerate(self._build()):
            own = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"m{i}.det.")}
            cal = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"m{i}.cal.")}
            members.append(Member(det.restore(own), TailCalibrator.from_state(cal),
                                  np.asarray(state[f"m{i}.reference"], dtype=float).reshape(-1)))
        self.members_ = members
