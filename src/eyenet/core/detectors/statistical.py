"""Rolling statistical detectors: z-score, MAD and IQR over a trailing window.

Each scores point ``i`` against the ``window`` points before it (never itself),
so a spike cannot hide by inflating its own reference statistics.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from eyenet.core.detectors.base import Detector, interval

_TINY = 1e-12


class _Rolling(Detector):
    _constraints = {"window": interval(3, 100_000, integer=True)}

    def __init__(self, *, window: int = 64) -> None:
        self.window = window

    @property
    def min_history(self) -> int:
        return self.window + 1

    def _fit(self, x: np.ndarray) -> None:
        # A floor for the spread, so a flat stretch does not turn noise into infinity.
        spread = float(np.subtract(*np.percentile(x, [75, 25])))
        level = float(np.median(np.abs(x)))
        self.spread_floor_ = max(1e-3 * spread, 1e-6 * level, _TINY)

    def _state(self) -> dict[str, np.ndarray]:
        return {"spread_floor": np.array(self.spread_floor_)}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.spread_floor_ = float(state["spread_floor"])

    def _past(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reference windows, current points): window k is x[k:k+W], scored point x[k+W]."""
        w = self.window
        return sliding_window_view(x[:-1], w), x[w:]


class ZScore(_Rolling):
    """|x - mean| / std of the trailing window."""

    family = "zscore"

    def _score(self, x: np.ndarray) -> np.ndarray:
        ref, cur = self._past(x)
        mean = ref.mean(axis=1)
        std = ref.std(axis=1, ddof=1)
        return np.abs(cur - mean) / np.maximum(std, self.spread_floor_)


class MAD(_Rolling):
    """|x - median| / (1.4826 * median absolute deviation) of the trailing window."""

    family = "mad"

    def _score(self, x: np.ndarray) -> np.ndarray:
        ref, cur = self._past(x)
        med = np.median(ref, axis=1)
        mad = 1.4826 * np.median(np.abs(ref - med[:, None]), axis=1)
        return np.abs(cur - med) / np.maximum(mad, self.spread_floor_)


class IQR(_Rolling):
    """Signed distance outside the trailing window's inter-quartile box, in IQRs.

    Negative inside the box (how deep inside), positive beyond the quartiles.
    """

    family = "iqr"

    def _score(self, x: np.ndarray) -> np.ndarray:
        ref, cur = self._past(x)
        q1, q3 = np.percentile(ref, [25, 75], axis=1)
        iqr = np.maximum(q3 - q1, self.spread_floor_)
        return np.maximum(cur - q3, q1 - cur) / iqr
