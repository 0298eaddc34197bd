"""Isolation Forest over window features, with a vectorized evaluator.

scikit-learn fits the forest. Scoring does not call ``score_samples`` (a Python
loop over trees, ~15 ms for one sample): the fitted trees are exported to
padded arrays once and evaluated for all trees and samples together, giving
the same scores (tested) in tens of microseconds for one window. The arrays
are also the saved artifact, so no pickle is ever needed to load a forest.
"""
from __future__ import annotations

import numpy as np
from sklearn.ensemble import IsolationForest

from eyenet.core import features
from eyenet.core.detectors import trees as trees_
from eyenet.core.detectors.base import Detector, interval


def average_path_length(n: np.ndarray) -> np.ndarray:
    """Expected path length of an unsuccessful BST search among ``n`` points (as scikit-learn)."""
    n = np.asarray(n, dtype=float)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


class ForestArrays:
    """A fitted isolation forest as padded arrays: (trees, nodes)."""

    def __init__(self, feature: np.ndarray, threshold: np.ndarray, left: np.ndarray, right: np.ndarray,
                 value: np.ndarray, depth: int, norm: float) -> None:
        self.feature, self.threshold, self.left, self.right, self.value = feature, threshold, left, right, value
        self.depth, self.norm = int(depth), float(norm)
        self._rows = np.arange(feature.shape[0])

    @classmethod
    def from_sklearn(cls, forest: IsolationForest) -> "ForestArrays":
        trees = forest.estimators_
        a = trees_.padded(trees)
        feature, internal = a["feature"], a["internal"]
        for i, feats in enumerate(forest.estimators_features_):  # each tree saw a subset of the features
            feature[i, internal[i]] = np.asarray(feats)[feature[i, internal[i]]]
        node_depth, depth = trees_.depth_of(a["left"], a["right"], internal)
        value = np.zeros(feature.shape)
        for i, est in enumerate(trees):
            leaf = np.flatnonzero(~internal[i, : est.tree_.node_count])
            value[i, leaf] = node_depth[i, leaf] + average_path_length(est.tree_.n_node_samples[leaf])
        norm = float(average_path_length(np.array([forest.max_samples_]))[0])
        return cls(feature, a["threshold"], a["left"], a["right"], value, depth, norm)

    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score in (0, 1], higher = more anomalous (= -score_samples)."""
        node = trees_.leaves(X, self.feature, self.threshold, self.left, self.right, self.depth)
        mean_depth = self.value[self._rows[None, :], node].mean(axis=1)
        return 2.0 ** (-mean_depth / self.norm)

    def state(self) -> dict[str, np.ndarray]:
        return {"feature": self.feature, "threshold": self.threshold, "left": self.left, "right": self.right,
                "value": self.value, "meta": np.array([self.depth, self.norm])}

    @classmethod
    def from_state(cls, s: dict[str, np.ndarray]) -> "ForestArrays":
        depth, norm = s["meta"]
        return cls(s["feature"], s["threshold"], s["left"], s["right"], s["value"], int(depth), float(norm))


class IForest(Detector):
    """Isolation Forest on the statistics of the trailing window (level, spread, shape, trend)."""

    family = "iforest"
    _constraints = {
        "window": interval(4, 10_000, integer=True),
        "n_estimators": interval(10, 1000, integer=True),
        "max_samples": interval(16, 4096, integer=True),
        "seed": interval(0, 2**31 - 1, integer=True),
    }

    def __init__(self, *, window: int = 32, n_estimators: int = 100, max_samples: int = 256, seed: int = 0) -> None:
        self.window = window
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.seed = seed

    @property
    def min_history(self) -> int:
        return self.window

    def _features(self, x: np.ndarray) -> np.ndarray:
        f = features.window_stats(x, self.window)
        return (f - self.center_) / self.scale_

    def _fit(self, x: np.ndarray) -> None:
        raw = features.window_stats(x, self.window)
        self.center_ = np.median(raw, axis=0)
        q75, q25 = np.percentile(raw, [75, 25], axis=0)
        self.scale_ = np.maximum(q75 - q25, 1e-9 * (np.abs(self.center_) + 1.0))
        forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(raw)),
            random_state=self.seed,
        ).fit((raw - self.center_) / self.scale_)
        self.forest_ = ForestArrays.from_sklearn(forest)
        self.sklearn_ = forest  # kept in memory only, for comparison; never saved

    def _score(self, x: np.ndarray) -> np.ndarray:
        return self.forest_.score(self._features(x))

    def _state(self) -> dict[str, np.ndarray]:
        return {"center": self.center_, "scale": self.scale_, **self.forest_.state()}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.center_, self.scale_ = state["center"], state["scale"]
        self.forest_ = ForestArrays.from_state(state)
