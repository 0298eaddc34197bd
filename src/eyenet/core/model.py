"""A deployable anomaly model: detector -> calibrator -> running rank -> alarm policy.

The same :meth:`AnomalyModel.score_stream` serves a whole file offline, a window
behind HTTP, and one point at a time with per-series state, so all three give
the same numbers.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from eyenet.core import detectors
from eyenet.core.alarms import AlarmPolicy, AlarmState
from eyenet.core.calibration import RunningRank, TailCalibrator, check_holdout, held_out_start, holdout_split
from eyenet.core.detectors.base import Detector, as_series, check_labels, load_npz, normal_rows
from eyenet.core.errors import ArtifactError, InvalidParameterError, NotFittedError


#: the share of held-out points inside the band a response draws around the expected value
BAND_COVERAGE = 0.99


@dataclass
class Scores:
    """Per-point output. NaN in ``score`` means the model is not ready yet."""

    raw: np.ndarray
    calibrated: np.ndarray
    score: np.ndarray
    alarm: np.ndarray
    #: (points, members): what the combination took from each member (its rank, or its calibrated
    #: score without ranks; NaN: left out), for each member's share of the score
    members: np.ndarray | None = None

    @property
    def ready(self) -> np.ndarray:
        return np.isfinite(self.score)

    def __len__(self) -> int:
        return len(self.score)


_GAP_FIELDS = ("last_ts", "step", "last_value")  # StreamState's fields for eyenet.core.gaps


@dataclass
class StreamState:
    """What a stream must remember between calls: recent values, its own raw scores and ranks.

    ``scores`` holds only the scores this stream produced (per member, oldest
    first, at most the rank history); the model's held-out reference scores
    fill the rest of each rank history, so a new stream costs nothing to store.
    ``model`` names the model version whose raw scores these are: raw scores of
    another version are not comparable, and :meth:`AnomalyModel.adopt` drops them.
    ``last_ts``, ``step`` and ``last_value`` are what :func:`eyenet.core.gaps.fill`
    needs to drop repeated points and impute missing ones (NaN: not known yet);
    scoring carries them over unchanged, the caller sets them from ``fill``'s result.
    """

    values: np.ndarray = field(default_factory=lambda: np.empty(0))
    scores: list[np.ndarray] = field(default_factory=list)  # per member, oldest first
    ranks: np.ndarray = field(default_factory=lambda: np.empty(0))
    alarm: AlarmState = field(default_factory=AlarmState)
    seen: int = 0
    model: str = ""
    last_ts: float = math.nan  # unix seconds of the last point applied (NaN: it had no timestamp)
    step: float = math.nan  # the series' sampling interval in seconds, learned from its timestamps
    last_value: float = math.nan  # the last value applied, real or imputed (carried into a missing one)

    def _scalars(self) -> dict[str, Any]:
        """The scalar fields, JSON-ready (NaN as null)."""
        out: dict[str, Any] = {"seen": self.seen, "model": self.model}
        for k in _GAP_FIELDS:
            v = float(getattr(self, k))
            out[k] = v if math.isfinite(v) else None
        return out

    @staticmethod
    def _gap_fields(d: dict[str, Any]) -> dict[str, float]:
        """The gap fields of a dict from :meth:`_scalars` (absent or null: NaN, as in states written before them)."""
        return {k: math.nan if d.get(k) is None else float(d[k]) for k in _GAP_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": self.values.tolist(),
            "scores": [h.tolist() for h in self.scores],
            "ranks": self.ranks.tolist(),
            "alarm": self.alarm.to_dict(),
            **self._scalars(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StreamState":
        return cls(
            values=np.asarray(d["values"], dtype=float),
            scores=[np.asarray(h, dtype=float) for h in d["scores"]],
            ranks=np.asarray(d.get("ranks", []), dtype=float),
            alarm=AlarmState.from_dict(d["alarm"]),
            seen=int(d["seen"]),
            model=str(d.get("model", "")),
            **cls._gap_fields(d),
        )

    def to_bytes(self) -> bytes:
        """Compact binary form (a JSON header, then the float64 arrays back to back; no pickle)."""
        arrays = [self.values, *self.scores, self.ranks]
        head = json.dumps({"lengths": [len(a) for a in arrays], "alarm": self.alarm.to_dict(),
                           **self._scalars()}).encode()
        body = np.concatenate([np.asarray(a, dtype="<f8") for a in arrays]) if arrays else np.empty(0)
        return len(head).to_bytes(4, "little") + head + body.astype("<f8").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "StreamState":
        n = int.from_bytes(data[:4], "little")
        head = json.loads(data[4 : 4 + n])
        flat = np.frombuffer(data[4 + n :], dtype="<f8")
        lengths = head["lengths"]
        if sum(lengths) != len(flat) or len(lengths) < 2:
            raise ValueError(f"stream state: {len(flat)} values for lengths {lengths}")
        parts = np.split(flat.copy(), np.cumsum(lengths)[:-1])
        return cls(values=parts[0], scores=parts[1:-1], ranks=parts[-1], alarm=AlarmState.from_dict(head["alarm"]),
                   seen=int(head["seen"]), model=str(head.get("model", "")), **cls._gap_fields(head))


#: a reference of fewer held-out scores (a model fitted on fewer than 500 rows) says too little about
#: the tail: the threshold is lowered no further than a new maximum beyond this many ranks (0.589)
REACH_FLOOR = 150


class AnomalyModel:
    """Detector + calibration fitted on held-out data + running rank + alarms.

    ``holdout`` is the trailing fraction of the training series kept out of the
    detector's fit; the calibrator learns the detector's score distribution on
    it, so the calibration reflects unseen data. ``rank=None`` uses the
    calibrated score directly as the final score.
    """

    def __init__(
        self,
        detector: Detector,
        *,
        holdout: float = 0.3,
        tail_quantile: float = 0.9,
        rank: RunningRank | None = RunningRank(),
        alarm: AlarmPolicy = AlarmPolicy(),
    ) -> None:
        self.detector = detector
        self.holdout = holdout
        self.tail_quantile = tail_quantile
        self.rank = rank
        self.alarm = alarm

    @property
    def name(self) -> str:
        return self.detector.family

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector.to_dict(),
            "holdout": self.holdout,
            "tail_quantile": self.tail_quantile,
            "rank": asdict(self.rank) if self.rank else None,
            "alarm": asdict(self.alarm),
        }

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "AnomalyModel":
        try:
            kw: dict[str, Any] = {}
            for key in ("holdout", "tail_quantile"):
                if key in config:
                    kw[key] = float(config[key])
            if "rank" in config:
                kw["rank"] = RunningRank(**config["rank"]) if config["rank"] is not None else None
            if "alarm" in config:
                kw["alarm"] = AlarmPolicy(**config["alarm"])
            return cls(detectors.from_dict(config["detector"]), **kw)
        except (KeyError, TypeError) as exc:
            raise InvalidParameterError(f"model config: {exc}") from None

    # -- fitting -------------------------------------------------------------------
    def fit(self, values: Any, labels: Any = None) -> "AnomalyModel":
        """Fit the detector on the head of ``values``, calibrate on its held-out tail.

        ``labels`` (1 anomaly, 0 normal, NaN unknown, one per value) reach the members that learn
        from them (:attr:`~eyenet.core.detectors.base.Detector.supervised`), and the rows labelled
        anomalous are kept out of the calibration and of the ranks' reference."""
        check_holdout(self.holdout)
        if self.rank:
            self.rank.validate()
        self.alarm.validate()
        x = as_series(values)
        y = None if labels is None else check_labels(labels, len(x))
        det = self.detector
        split = holdout_split(len(x), self.holdout, det)
        # an ensemble's members learn from all of the fit part and calibrate on the same held-out tail
        det.fit_split(x, split, y)
        # score the held-out tail with the history before it that its scores may use
        start = held_out_start(det, split)
        usual = normal_rows(y, split, len(x) - split)
        held = det.score(x[start:])[split - start :][usual]
        self.calibrator_ = TailCalibrator(tail_quantile=self.tail_quantile).fit(held)
        # each member's held-out raw scores seed its running rank's history
        self.reference_ = [r[np.isfinite(r)] for r in self._member_raw(x[start:])[split - start :][usual].T]
        self.fit_tail_ = x[-min(len(x), max(4 * det.context, 4 * det.min_history, 200)) :]  # probe; not saved
        return self

    @property
    def threshold(self) -> float:
        """The alarm threshold in force: ``alarm.threshold``, or, with ``alarm.reachable`` (the default)
        where the ranks' reference (the held-out scores a stream's ranks start from) is too short for
        any point to rank that high, just below the rank of a point beyond every reference score.
        A model fitted on 750 rows holds out 225: a new maximum then ranks log10(226) / log10(5001)
        = 0.637, so at 0.7 its streams could not alarm before some 390 scores were remembered."""
        return self.policy.threshold

    @property
    def policy(self) -> AlarmPolicy:
        """``alarm`` with :attr:`threshold`: what decides the alarms."""
        ref = self.__dict__.get("reference_")
        hit = self.__dict__.get("_policy_cache")
        if hit is None or hit[0] is not self.alarm or hit[1] is not ref or hit[2] is not self.rank:
            hit = (self.alarm, ref, self.rank, self._reachable(ref))
            self._policy_cache = hit
        return hit[3]

    def _reachable(self, ref: list[np.ndarray] | None) -> AlarmPolicy:
        a = self.alarm
        if not a.reachable or self.rank is None or not ref:
            return a
        seen = max(min(len(r) for r in ref), self.rank.learning, REACH_FLOOR)
        # a hair below: a weighted mean of equal top ranks may round one ulp under them
        top = self.rank.top(seen) - 1e-9
        return replace(a, threshold=top) if top < a.threshold else a

    @property
    def members(self) -> list[Detector]:
        """The detectors whose scores are ranked: an ensemble's members, else the detector."""
        return self.detector.member_detectors

    def warm(self) -> "AnomalyModel":
        """Build what each member's real-time path needs now (:meth:`Detector.warm`), not at the first point."""
        for d in self.members:
            d.warm()
        return self

    def _member_raw(self, x: np.ndarray) -> np.ndarray:
        """Raw scores of every member, shape (len(x), members)."""
        if not len(x):
            return np.empty((0, len(self.members)))
        return np.column_stack([d.score(x) for d in self.members])

    def _combine(self, ranks: np.ndarray) -> np.ndarray:
        """One rank per point from the members' ranks (NaN until every member is ready)."""
        if ranks.shape[1] == 1:
            return ranks[:, 0]
        if len(ranks) == 1:  # one point: the real-time path
            return np.array([self.detector.combine_row(ranks[0].tolist())])
        out = np.full(len(ranks), np.nan)
        ok = np.isfinite(ranks).all(axis=1)
        if ok.any():
            out[ok] = self.detector.combine_scores(ranks[ok])
        return out

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "calibrator_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{self.name}: model is not fitted")

    # -- scoring -------------------------------------------------------------------
    def calibrated(self, values: Any) -> np.ndarray:
        """Pointwise calibrated scores in [0, 1] (NaN = not ready); no running state."""
        self._check_fitted()
        return self.calibrator_.transform(self.detector.score(values))

    def new_state(self) -> StreamState:
        self._check_fitted()
        return StreamState(scores=[np.empty(0) for _ in self.reference_])

    def adopt(self, state: StreamState, model: str) -> StreamState:
        """``state`` for scoring with this model, known as ``model`` (e.g. ``name/version``): a state
        another version wrote keeps the series' values, alarm state and count, and drops the raw
        scores and ranks, which that version's scale made (this version's reference stands in)."""
        if state.model == model or not state.model:
            return state if state.model == model else replace(state, model=model)
        return StreamState(values=state.values, scores=[np.empty(0) for _ in self.reference_],
                           alarm=state.alarm, seen=state.seen, model=model, last_ts=state.last_ts,
                           step=state.step, last_value=state.last_value)

    def _rank_history(self, j: int, own: np.ndarray) -> np.ndarray:
        """Member ``j``'s rank history: the newest reference scores, then the stream's own."""
        keep = self.rank.history if self.rank else 0
        if len(own) >= keep:
            return own
        ref = self.reference_[j]
        return np.concatenate((ref[max(len(ref) - (keep - len(own)), 0) :], own))

    def score_stream(self, values: Any, state: StreamState | None = None) -> tuple[Scores, StreamState]:
        """Score new points of a stream given what came before; returns the new state."""
        self._check_fitted()
        st = state if state is not None else self.new_state()
        x = as_series(values)
        ctx = self.context(x, st)
        inputs = self.member_inputs(ctx, len(x))
        member_raw = np.column_stack([d.score(v)[len(v) - len(x) :] for d, v in zip(self.members, inputs)]) \
            if len(x) else np.empty((0, len(inputs)))
        return self.finish_stream(member_raw, x, st)

    def member_inputs(self, ctx: np.ndarray, n_new: int) -> list[np.ndarray]:
        """What each member must score to produce the last ``n_new`` points of ``ctx``: only as much
        history as its scores can depend on (``context``), so one new point costs one window."""
        out = []
        for d in self.members:
            need = n_new + max(d.context, d.min_history) - 1
            out.append(ctx[-need:] if need < len(ctx) else ctx)
        return out

    def context(self, values: np.ndarray, state: StreamState) -> np.ndarray:
        """The values the members score to produce the new points' scores: remembered history + new points."""
        return np.concatenate((state.values, values))

    @property
    def expected_member(self) -> int | None:
        """The member whose expected value the model reports (the first that has one: a seasonal
        baseline or a forecast), or None."""
        return next((j for j, d in enumerate(self.members) if d.expects), None)

    def expected_many(self, inputs: list[list[np.ndarray]], n_new: list[int]) -> list[np.ndarray] | None:
        """The expected value at the new points of each stream (``inputs``: each stream's
        :meth:`member_inputs`), from :attr:`expected_member`; None when no member expects."""
        j = self.expected_member
        if j is None:
            return None
        return self.members[j].expected_many([i[j] for i in inputs], n_new)

    @property
    def expected_halfwidth(self) -> float | None:
        """Half the width of the band around the expected value, in the series' units (None without
        an expecting member, :attr:`expected_member`): the distance from it within which
        ``BAND_COVERAGE`` of the held-out points fell (that member's raw score grows with the distance)."""
        hit = self.__dict__.get("_halfwidth")
        if hit is None:
            j = self.expected_member
            unit = None if j is None else self.members[j].raw_unit
            ref = self.reference_[j] if unit is not None and j < len(self.reference_) else np.empty(0)
            hit = (float(np.quantile(ref, BAND_COVERAGE)) * unit,) if len(ref) >= 10 else (None,)
            self._halfwidth = hit
        return hit[0]

    @property
    def member_families(self) -> list[str]:
        return [d.family for d in self.members]

    def member_calibrated(self, member_raw: np.ndarray) -> np.ndarray:
        """Each member's calibrated [0, 1] score, shape like ``member_raw``."""
        return self.detector.calibrate_members(member_raw, self.calibrator_)

    def finish_stream(
        self, member_raw: np.ndarray, values: np.ndarray, state: StreamState, *, missing: tuple[int, ...] = ()
    ) -> tuple[Scores, StreamState]:
        """Everything after the members' raw scores: calibration, ranks, combination, alarms, new state.

        ``member_raw`` has one row per new point and one column per member
        (what :meth:`score_stream` computes in-process, or what remote member
        deployments returned). Members listed in ``missing`` (column indices)
        did not answer: the combination uses the others (mean of their ranks)
        and their histories are kept unchanged.
        """
        st, x, det = state, values, self.detector
        present = [j for j in range(member_raw.shape[1]) if j not in missing]
        if not present:
            raise InvalidParameterError(f"{self.name}: no member answered")
        if missing:
            s = self.member_calibrated(member_raw)[:, present]
            raw = np.where(np.isfinite(s).all(axis=1), s.mean(axis=1), np.nan)
            cal = raw
        else:
            raw = det.combine_raw(member_raw)
            cal = self.calibrator_.transform(raw)
        parts = None
        if self.rank:
            # ranks need only the order of scores: rank raw ones, which never saturate
            ranks, new_hist = [], []
            for j, hist in enumerate(st.scores):
                if j in missing:
                    ranks.append(np.full(len(x), np.nan))
                    new_hist.append(hist)
                    continue
                new = member_raw[:, j]
                r, _ = self.rank.rank(new, self._rank_history(j, hist))
                ranks.append(r)
                new_hist.append(np.concatenate((hist, new[np.isfinite(new)]))[-self.rank.history :])
            stacked = parts = np.column_stack(ranks)
            if missing:
                sub = stacked[:, present]
                combined = np.where(np.isfinite(sub).all(axis=1), sub.mean(axis=1), np.nan)
            else:
                combined = self._combine(stacked)
            score, new_ranks = self.rank.novelty(combined, st.ranks)
        else:
            score, new_hist, new_ranks = cal, [np.empty(0) for _ in st.scores], np.empty(0)
        alarm, alarm_state = self.policy.decide(score, st.alarm)
        ctx = np.concatenate((st.values, x))
        keep = max(det.context, det.min_history) - 1
        new_state = StreamState(
            values=ctx[max(len(ctx) - keep, 0) :] if keep else np.empty(0),
            scores=new_hist,
            ranks=new_ranks,
            alarm=alarm_state,
            seen=st.seen + len(x),
            model=st.model,
            last_ts=st.last_ts,
            step=st.step,
            last_value=st.last_value,
        )
        if parts is None:
            parts = self.member_calibrated(member_raw)
            parts[:, list(missing)] = np.nan
        return Scores(raw=raw, calibrated=cal, score=score, alarm=alarm, members=parts), new_state

    def finish_many(self, member_raw: np.ndarray, values: np.ndarray,
                    states: list[StreamState]) -> tuple[Scores, list[StreamState]]:
        """:meth:`finish_stream` of one new point in each of many streams, every member answering:
        row ``i`` of ``member_raw`` and ``values[i]`` belong to ``states[i]``. The same numbers as
        one call per stream, with calibration and combination done once on arrays over the streams
        and only what each stream keeps of its own (ranks, novelty, alarms) done stream by stream."""
        det, n = self.detector, len(states)
        raw = det.combine_raw(member_raw)
        cal = self.calibrator_.transform(raw)
        hists: list[list[np.ndarray]] = []
        if self.rank:
            rk = self.rank
            scale = math.log10(rk.history + 1)
            ranks = np.full(member_raw.shape, np.nan)
            for i, st in enumerate(states):  # RunningRank.rank of one score: at least as high in the history
                own = []
                for j, hist in enumerate(st.scores):
                    v = float(member_raw[i, j])
                    if v != v:  # not ready: not remembered
                        own.append(hist[-rk.history :])
                        continue
                    h = self._rank_history(j, hist)[-rk.history :]
                    m = len(h)
                    if m >= rk.learning:
                        ranks[i, j] = -math.log10((int(np.count_nonzero(h >= v)) + 1) / (m + 1)) / scale
                    own.append(np.concatenate((hist, (v,)))[-rk.history :])
                hists.append(own)
            combined = self._combine(ranks)
            score, new_ranks = np.full(n, np.nan), []
            for i, st in enumerate(states):  # RunningRank.novelty of one rank
                if not rk.suppress:
                    score[i] = combined[i]
                    new_ranks.append(np.empty(0))
                    continue
                q = np.asarray(st.ranks, dtype=float)[-rk.suppress :]
                r = float(combined[i])
                if r == r:
                    score[i] = r if (not len(q) or r > q.max()) else 0.0
                    q = np.append(q, r)[-rk.suppress :]
                new_ranks.append(q)
        else:
            score, new_ranks = cal, [np.empty(0)] * n
            hists = [[np.empty(0) for _ in st.scores] for st in states]
            ranks = self.member_calibrated(member_raw)
        alarm = np.zeros(n, dtype=bool)
        keep = max(det.context, det.min_history) - 1
        out = []
        for i, st in enumerate(states):
            flags, alarm_state = self.policy.decide(score[i : i + 1], st.alarm)
            alarm[i] = flags[0]
            ctx = np.concatenate((st.values, values[i : i + 1]))
            out.append(StreamState(values=ctx[max(len(ctx) - keep, 0) :] if keep else np.empty(0), scores=hists[i],
                                   ranks=new_ranks[i], alarm=alarm_state, seen=st.seen + 1, model=st.model,
                                   last_ts=st.last_ts, step=st.step, last_value=st.last_value))
        return Scores(raw=raw, calibrated=cal, score=score, alarm=alarm, members=ranks), out

    def score(self, values: Any) -> Scores:
        """Score a whole series from a fresh stream."""
        return self.score_stream(values)[0]

    def stream(self) -> Any:
        """A :class:`~eyenet.core.stream.Stream` of one series from a fresh state: ``stream.score_one(x)``."""
        from eyenet.core.stream import Stream

        self._check_fitted()
        return Stream(self)

    # -- descriptions (recorded with every registered version) ------------------------------
    def calibration_summary(self) -> dict[str, Any]:
        """The fitted calibration in numbers: tail model and held-out score quantiles per member."""
        self._check_fitted()
        cal = self.calibrator_
        q = [0.5, 0.9, 0.99]
        return {
            "tail_quantile": cal.tail_quantile,
            "tail_threshold": cal.threshold_,
            "tail_scale": cal.tail_scale_,
            "held_out_scores": len(cal.body_),
            "held_out_quantiles": dict(zip(map(str, q), np.quantile(cal.body_, q).tolist())),
            "rank": asdict(self.rank) if self.rank else None,
            "alarm": asdict(self.alarm),
            "threshold": self.threshold,
            "members": [
                {"family": d.family, "reference_scores": len(r), "reference_median": float(np.median(r)) if len(r) else None}
                for d, r in zip(self.members, self.reference_)
            ],
        }

    def feature_config(self) -> dict[str, Any]:
        """What each member reads from the series: history length and its window parameters."""
        members = []
        for d in self.members:
            params = d.get_params()
            members.append({"family": d.family, "min_history": d.min_history,
                            **{k: params[k] for k in ("window", "normalisation") if k in params}})
        return {"input": "univariate values in timestamp order", "min_history": self.detector.min_history,
                "members": members}

    def training_history(self) -> dict[str, list[dict[str, Any]]]:
        """Per-epoch training records of every torch member, keyed by a metric-name prefix."""
        members = self.members
        out = {}
        for i, d in enumerate(members):
            history = getattr(d, "history_", None)
            if history:
                out["" if len(members) == 1 else f"m{i}.{d.family}."] = list(history)
        return out

    # -- persistence ---------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        self._check_fitted()
        d = Path(path)
        self.detector.save(d / "detector")
        (d / "model.json").write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        refs = {f"reference.{j}": r for j, r in enumerate(self.reference_)}
        np.savez(d / "calibration.npz", **refs, **self.calibrator_.state())
        return d

    @classmethod
    def load(cls, path: str | Path) -> "AnomalyModel":
        d = Path(path)
        try:
            config = json.loads((d / "model.json").read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{d / 'model.json'}: missing model config") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{d / 'model.json'}: corrupt model config ({exc})") from None
        model = cls.from_dict(config)
        model.detector = detectors.load(d / "detector")
        cal = load_npz(d / "calibration.npz")
        try:
            model.calibrator_ = TailCalibrator.from_state(cal)
            refs = sorted((k for k in cal if k.startswith("reference.")), key=lambda k: int(k.split(".")[1]))
            model.reference_ = [np.asarray(cal[k], dtype=float) for k in refs]
            if len(model.reference_) != len(model.members):
                raise ValueError(f"{len(model.reference_)} score histories for {len(model.members)} members")
        except (KeyError, ValueError) as exc:
            raise ArtifactError(f"{d / 'calibration.npz'}: incomplete calibration ({exc})") from None
        return model

