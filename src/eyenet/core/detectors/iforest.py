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
        width = max(t.tree_.node_count for t in trees)
        shape = (len(trees), width)
        feature = np.zeros(shape, dtype=np.int64)
        threshold = np.full(shape, np.inf)
        left = np.tile(np.arange(width), (len(trees), 1))
        right = left.copy()
        value = np.zeros(shape)
        depth = 0
        for i, (est, feats) in enumerate(zip(trees, forest.estimators_features_)):
            t = est.tree_
            n = t.node_count
            internal = t.children_left[:n] != -1
            node_depth = np.zeros(n, dtype=np.int64)
            for node in range(n):  # nodes are numbered parents before children
                if internal[node]:
                    node_depth[t.children_left[node]] = node_depth[t.children_right[node]] = node_depth[node] + 1
            idx = np.flatnonzero(internal)
            feature[i, idx] = np.asarray(feats)[t.feature[idx]]
            threshold[i, idx] = t.threshold[idx]
            left[i, idx] = t.children_left[idx]
            right[i, idx] = t.children_right[idx]
            leaves = np.flatnonzero(~internal)
            value[i, leaves] = node_depth[leaves] + average_path_length(t.n_node_samples[leaves])
            depth = max(depth, int(node_depth.max()))
        norm = float(average_path_length(np.array([forest.max_samples_]))[0])
        return cls(feature, threshold, left, right, value, depth, norm)

    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score in (0, 1], higher = more anomalous (= -score_samples)."""
        X = np.asarray(X, dtype=np.float32).astype(np.float64)  # trees compare float32 inputs
        n = len(X)
        rows = self._rows[None, :]
        node = np.zeros((n, len(self._rows)), dtype=np.int64)
        samples = np.arange(n)[:, None]
        for _ in range(self.depth):
            f = self.feature[rows, node]
            go_left = X[samples, f] <= self.threshold[rows, node]
            node = np.where(go_left, self.left[rows, node], self.right[rows, node])
        mean_depth = self.value[rows, node].mean(axis=1)
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
