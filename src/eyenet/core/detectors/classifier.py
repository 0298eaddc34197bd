"""A supervised member: gradient-boosted trees that learn what operators labelled as anomalies.

The other families learn what normal looks like and score distance from it.
This one learns from labels (``fit(values, labels=...)``: 1 anomaly, 0 normal,
NaN unknown), for example the points operators marked through ``POST
/v1/feedback`` as true anomalies or false alarms: it picks up the shapes an
operator cares about and learns to stay quiet on the ones they dismissed.

Features, at every row, from the trailing windows only (causal): how the
last point and a short window stand against a long window, in units of the
long window's spread (:data:`FEATURE_NAMES`), so what is learned at one level
or scale is recognised at another. scikit-learn's
``GradientBoostingClassifier`` fits the trees, anomalies weighted up to the
weight of the normal rows; scoring walks the exported trees as arrays
(:mod:`eyenet.core.detectors.trees`), which are also the saved artifact. The
raw score is the predicted log-odds of "anomaly" (higher = more anomalous).
"""
from __future__ import annotations

import numpy as np

from eyenet.core import features
from eyenet.core.detectors import trees as trees_
from eyenet.core.detectors.base import ANOMALY, Detector, interval
from eyenet.core.errors import InvalidParameterError, NotEnoughDataError

#: what :meth:`Classifier._features` computes at each row, in order
FEATURE_NAMES: tuple[str, ...] = ("z_long", "z_short", "level_shift", "log_spread_ratio", "range_position",
                                  "drift", "step", "relative_spread")
#: features are clipped to +-this, so a flat window's huge ratios stay comparable
FEATURE_CAP = 50.0


class Classifier(Detector):
    """Gradient-boosted trees on window features, fitted on labelled points.

    ``window``/``short``: the long and short trailing windows; ``n_estimators``,
    ``max_depth``, ``learning_rate``, ``subsample``: the boosting;
    ``min_anomalies``: labelled anomalous rows needed to fit; ``seed``.
    """

    family = "classifier"
    supervised = True
    _constraints = {
        "window": interval(8, 10_000, integer=True),
        "short": interval(2, 10_000, integer=True),
        "n_estimators": interval(10, 1000, integer=True),
        "max_depth": interval(1, 8, integer=True),
        "learning_rate": interval(1e-3, 1.0),
        "subsample": interval(0.1, 1.0),
        "min_anomalies": interval(1, 100_000, integer=True),
        "seed": interval(0, 2**31 - 1, integer=True),
    }

    def __init__(self, *, window: int = 64, short: int = 8, n_estimators: int = 100, max_depth: int = 3,
                 learning_rate: float = 0.1, subsample: float = 0.8, min_anomalies: int = 3, seed: int = 0) -> None:
        self.window = window
        self.short = short
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.min_anomalies = min_anomalies
        self.seed = seed

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.short >= self.window:
            raise InvalidParameterError(f"classifier: short={self.short} must be below window={self.window}")

    @property
    def min_history(self) -> int:
        return int(self.window)

    def _features(self, x: np.ndarray) -> np.ndarray:
        """Rows ``window - 1 ..``: how the last point and the short window stand against the long
        window, each in units of the long window's spread, so a shape learned at one level or scale
        is recognised at another (:data:`FEATURE_NAMES`)."""
        w, s = int(self.window), int(self.short)
        long = features.window_stats(x, w)
        short = features.window_stats(x, s)[w - s :]
        last = x[w - 1 :]
        step = np.concatenate(([0.0], np.diff(x)))[w - 1 :]
        spread = long[:, 1] + 1e-9 * (np.abs(long[:, 0]) + 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.column_stack((
                long[:, 5],  # the last point's z against the long window
                short[:, 5],  # ... against the short window
                (short[:, 0] - long[:, 0]) / spread,  # a level shift
                np.log((short[:, 1] + 1e-9 * spread) / spread),  # a change of variance
                (last - long[:, 2]) / np.maximum(long[:, 3] - long[:, 2], 1e-9 * spread) - 0.5,  # where in the range
                long[:, 6] * w / spread,  # a drift over the window
                step / spread,  # the last step
                short[:, 1] / np.maximum(np.abs(long[:, 0]), 1e-12),  # short-window spread against the level
            ))
        return np.clip(np.nan_to_num(out, nan=0.0, posinf=FEATURE_CAP, neginf=-FEATURE_CAP), -FEATURE_CAP, FEATURE_CAP)

    def _fit(self, x: np.ndarray) -> None:
        from sklearn.ensemble import GradientBoostingClassifier

        X = self._features(x)
        y = self._labels[int(self.window) - 1 :]
        known = np.isfinite(y)
        positives = int((y[known] == ANOMALY).sum())
        if positives < int(self.min_anomalies) or positives == int(known.sum()):
            raise NotEnoughDataError(
                f"{self.family}: needs at least {self.min_anomalies} labelled anomalous points and some normal ones "
                f"with {self.window} points of history before them; got {positives} anomalous of {int(known.sum())} labelled")
        X, target = X[known], y[known].astype(int)
        weight = np.where(target == 1, max(1.0, (len(target) - positives) / positives), 1.0)  # classes weigh alike
        clf = GradientBoostingClassifier(n_estimators=int(self.n_estimators), max_depth=int(self.max_depth),
                                         learning_rate=float(self.learning_rate), subsample=float(self.subsample),
                                         random_state=int(self.seed)).fit(X, target, sample_weight=weight)
        estimators = [e[0] for e in clf.estimators_]
        a = trees_.padded(estimators)
        value = np.zeros(a["feature"].shape)
        for i, est in enumerate(estimators):
            value[i, : est.tree_.node_count] = est.tree_.value[:, 0, 0]
        _, depth = trees_.depth_of(a["left"], a["right"], a["internal"])
        # the prior's log-odds: what the decision function holds beyond the trees' sum
        init = float(clf.decision_function(X[:1])[0] - clf.learning_rate * value[np.arange(len(estimators)),
                     trees_.leaves(X[:1], a["feature"], a["threshold"], a["left"], a["right"], depth)[0]].sum())
        self.trees_ = {k: a[k] for k in ("feature", "threshold", "left", "right")}
        self.value_ = float(clf.learning_rate) * value
        self.meta_ = np.array([depth, init])
        self.sklearn_ = clf  # kept in memory only, for comparison; never saved

    def decision(self, X: np.ndarray) -> np.ndarray:
        """Log-odds of "anomaly" for feature rows ``X`` (scikit-learn's ``decision_function``)."""
        t = self.trees_
        node = trees_.leaves(X, t["feature"], t["threshold"], t["left"], t["right"], int(self.meta_[0]))
        return float(self.meta_[1]) + self.value_[np.arange(node.shape[1])[None, :], node].sum(axis=1)

    def _score(self, x: np.ndarray) -> np.ndarray:
        return self.decision(self._features(x))

    def _state(self) -> dict[str, np.ndarray]:
        return {"value": self.value_, "meta": self.meta_, **{f"tree.{k}": v for k, v in self.trees_.items()}}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.value_, self.meta_ = state["value"], state["meta"]
        self.trees_ = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("tree.")}
