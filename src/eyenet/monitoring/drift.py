"""Drift of live inputs and scores against what a model version was trained on.

Every registered version records a :class:`DriftReference`: for each feature
(the input ``value``, the ``calibrated`` score and the final ``score``) a
compact, JSON-safe summary of its training distribution. A
:class:`DriftMonitor` keeps the last ``window`` points of each (model, feature)
seen while serving and compares them with the reference by three tests:

- **PSI** (population stability index) over bins cut at the reference's
  quantiles. Equal-probability bins give every bin about ``1/bins`` of the
  reference, so no bin has a tiny expected share whose sampling noise would
  blow up the log ratio: with no drift, PSI stays near its small-sample bias
  of about ``(bins - 1) * (1/n + 1/N)`` (below 0.06 for 10 bins and windows of
  200 points or more), far from the 0.3 threshold, while a real shift gives
  about the same PSI whatever the window size. Empty bins are floored at
  ``PSI_EPSILON`` so PSI stays finite.
- **KS**: the two-sample Kolmogorov-Smirnov statistic against a quantile
  sketch of the reference (:func:`scipy.stats.ks_2samp`). Its p-value alone
  would flag any tiny shift in a large window, and serial correlation makes
  it overconfident, so a drift also needs the statistic (an effect size) to
  pass its threshold.
- **tail**: the windowed score-distribution check. The share of recent points
  above the reference's ``tail_quantile`` (0.95) against the reference's own
  share there, with a one-sided binomial test. On the scores it is an
  alarm-rate check: "do we exceed the training 95th percentile far more often
  than in training?" (at 0.99 a 200-point window expects two exceedances, too
  few to tell noise from drift).

Updating is O(points) (appending to a bounded deque); the tests run on read,
at most once per ``recompute_every`` new points of a (model, feature).
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from eyenet.core.errors import InvalidParameterError
from eyenet.core.reference import DriftReference, Reference

# ----------------------------------------------------------------------------------------------
# the monitor


@dataclass(frozen=True)
class Thresholds:
    """When a test calls a feature drifted. PSI above ``psi``; KS statistic above ``ks`` with p below
    ``alpha``; tail share above ``tail`` times the reference's with p below ``alpha``."""

    psi: float = 0.3
    ks: float = 0.2
    tail: float = 2.0
    alpha: float = 0.01

    def validate(self) -> Thresholds:
        if not (self.psi > 0 and 0 < self.ks < 1 and self.tail > 1 and 0 < self.alpha < 1):
            raise InvalidParameterError(f"drift thresholds {self}: need psi > 0, 0 < ks < 1, tail > 1, 0 < alpha < 1")
        return self

    def of(self, test: str) -> float:
        return {"psi": self.psi, "ks": self.ks, "tail": self.tail}[test]


@dataclass
class FeatureDrift:
    """The drift tests of one feature of one model over its recent window (``ready`` False: too few points)."""

    model: str
    feature: str
    points: int
    ready: bool
    psi: float | None = None
    ks: float | None = None
    ks_pvalue: float | None = None
    tail_rate: float | None = None
    tail_rate_reference: float | None = None
    tail_ratio: float | None = None
    tail_pvalue: float | None = None
    drifted_by: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return bool(self.drifted_by)

    def score(self, test: str) -> float | None:
        """The number a test is judged by: PSI, the KS statistic, or the tail ratio."""
        return {"psi": self.psi, "ks": self.ks, "tail": self.tail_ratio}[test]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted": self.drifted}


class DriftMonitor:
    """Recent windows of every (model, feature) against the model version's :class:`DriftReference`.

    ``observe`` appends (cheap enough for every request); ``check`` and
    ``report`` run the tests, reusing a result until ``recompute_every`` new
    points arrived. A window with fewer than ``min_points`` points is reported
    as not ready. Thread-safe.
    """

    def __init__(self, *, window: int = 1000, min_points: int = 200, recompute_every: int = 100,
                 thresholds: Thresholds = Thresholds()) -> None:
        if not 10 <= min_points <= window or recompute_every < 1:
            raise InvalidParameterError(
                f"window={window}, min_points={min_points}, recompute_every={recompute_every}: "
                "need 10 <= min_points <= window and recompute_every >= 1")
        self.window = window
        self.min_points = min_points
        self.recompute_every = recompute_every
        self.thresholds = thresholds.validate()
        self._refs: dict[str, DriftReference] = {}
        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._seen: dict[tuple[str, str], int] = {}
        self._cache: dict[tuple[str, str], tuple[int, FeatureDrift]] = {}
        self._lock = threading.Lock()

    def set_reference(self, model: str, reference: DriftReference) -> None:
        """Compare ``model`` with ``reference`` from now on (a new version): its windows start empty."""
        with self._lock:
            self._drop(model)
            self._refs[model] = reference
            for f in reference.features:
                self._windows[(model, f)] = deque(maxlen=self.window)
                self._seen[(model, f)] = 0

    def drop(self, model: str) -> None:
        """Stop watching ``model``."""
        with self._lock:
            self._drop(model)

    def _drop(self, model: str) -> None:
        self._refs.pop(model, None)
        for d in (self._windows, self._seen, self._cache):
            for key in [k for k in d if k[0] == model]:
                del d[key]

    def models(self) -> list[str]:
        return sorted(self._refs)

    def observe(self, model: str, feature: str, values: Any) -> None:
        """Append new points of a feature (non-finite ones, such as not-ready scores, are skipped).
        Points of a model or feature without a reference are ignored."""
        x = np.asarray(values, dtype=float).ravel()
        x = x[np.isfinite(x)].tolist()
        key = (model, feature)
        with self._lock:
            w = self._windows.get(key)
            if w is None:
                return
            w.extend(x)
            self._seen[key] += len(x)

    def observe_scores(self, model: str, values: Any, scores: Any) -> None:
        """What the serving path feeds after scoring: the new values and their :class:`~eyenet.core.model.Scores`."""
        self.observe(model, "value", values)
        self.observe(model, "calibrated", scores.calibrated)
        self.observe(model, "score", scores.score)

    def check(self, model: str, feature: str) -> FeatureDrift:
        """The tests of one feature over its current window."""
        key = (model, feature)
        with self._lock:
            if key not in self._windows:
                raise InvalidParameterError(f"no drift reference for {model!r} feature {feature!r}")
            seen = self._seen[key]
            hit = self._cache.get(key)
            if hit is not None and seen - hit[0] < self.recompute_every:
                return hit[1]
            x = np.fromiter(self._windows[key], dtype=float)
            ref = self._refs[model].features[feature]
        out = self._test(model, feature, ref, x)
        with self._lock:
            current = self._refs.get(model)
            if current is not None and current.features.get(feature) is ref:  # not replaced meanwhile
                self._cache[key] = (seen, out)
        return out

    def _test(self, model: str, feature: str, ref: Reference, x: np.ndarray) -> FeatureDrift:
        out = FeatureDrift(model, feature, points=len(x), ready=len(x) >= self.min_points)
        if not out.ready:
            return out
        t = self.thresholds
        out.psi = ref.psi(x)
        out.ks, out.ks_pvalue = ref.ks(x)
        out.tail_rate, out.tail_pvalue = ref.tail(x)
        out.tail_rate_reference = ref.tail_rate
        out.tail_ratio = out.tail_rate / max(ref.tail_rate, 0.5 / ref.n)
        out.drifted_by = [name for name, hit in (
            ("psi", out.psi > t.psi),
            ("ks", out.ks > t.ks and out.ks_pvalue < t.alpha),
            ("tail", out.tail_ratio > t.tail and out.tail_pvalue < t.alpha),
        ) if hit]
        return out

    def report(self, model: str | None = None) -> dict[str, dict[str, FeatureDrift]]:
        """Every feature's tests, per model (or for one ``model``): ``report()[model][feature]``."""
        names = [model] if model is not None else self.models()
        with self._lock:
            keys = [k for k in self._windows if k[0] in names]
        out: dict[str, dict[str, FeatureDrift]] = {}
        for m, f in sorted(keys):
            out.setdefault(m, {})[f] = self.check(m, f)
        return out

    def drifted(self, model: str) -> dict[str, bool]:
        """Per feature of ``model``: whether any test calls it drifted now."""
        return {f: r.drifted for f, r in self.report(model).get(model, {}).items()}
