"""Fitted scikit-learn trees as padded arrays, walked for every tree and sample at once.

scikit-learn evaluates one tree at a time in a Python loop (~15 ms for one
sample over a hundred trees). Exported once to arrays of shape (trees, nodes),
a whole ensemble of trees is walked level by level with numpy in tens of
microseconds for one window, and the arrays are the saved artifact: no pickle.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def padded(trees: list[Any]) -> dict[str, np.ndarray]:
    """The ``tree_`` of each fitted scikit-learn tree as (trees, nodes) arrays: ``feature``,
    ``threshold``, ``left``, ``right`` (a leaf points at itself) and ``internal``."""
    width = max(t.tree_.node_count for t in trees)
    shape = (len(trees), width)
    out = {
        "feature": np.zeros(shape, dtype=np.int64),
        "threshold": np.full(shape, np.inf),
        "left": np.tile(np.arange(width), (len(trees), 1)),
        "right": np.tile(np.arange(width), (len(trees), 1)),
        "internal": np.zeros(shape, dtype=bool),
    }
    for i, est in enumerate(trees):
        t = est.tree_
        n = t.node_count
        idx = np.flatnonzero(t.children_left[:n] != -1)
        out["feature"][i, idx] = t.feature[idx]
        out["threshold"][i, idx] = t.threshold[idx]
        out["left"][i, idx] = t.children_left[idx]
        out["right"][i, idx] = t.children_right[idx]
        out["internal"][i, idx] = True
    return out


def leaves(X: np.ndarray, feature: np.ndarray, threshold: np.ndarray, left: np.ndarray, right: np.ndarray,
           depth: int) -> np.ndarray:
    """The leaf each row of ``X`` reaches in each tree: shape (rows, trees). Inputs are compared as
    float32, as scikit-learn's trees compare them."""
    X = np.asarray(X, dtype=np.float32).astype(np.float64)
    n, trees = len(X), feature.shape[0]
    rows = np.arange(trees)[None, :]
    node = np.zeros((n, trees), dtype=np.int64)
    samples = np.arange(n)[:, None]
    for _ in range(int(depth)):
        f = feature[rows, node]
        go_left = X[samples, f] <= threshold[rows, node]
        node = np.where(go_left, left[rows, node], right[rows, node])
    return node


def depth_of(left: np.ndarray, right: np.ndarray, internal: np.ndarray) -> tuple[np.ndarray, int]:
    """Each node's depth (trees, nodes) and the deepest leaf's depth; nodes are numbered parents first."""
    depth = np.zeros(left.shape, dtype=np.int64)
    for i in range(left.shape[0]):
        for node in np.flatnonzero(internal[i]):
            depth[i, left[i, node]] = depth[i, right[i, node]] = depth[i, node] + 1
    return depth, int(depth.max()) if depth.size else 0
