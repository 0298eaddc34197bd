"""LSTM autoencoder: the anomaly score is the reconstruction error of recent points.

The window of ``window`` points ending at position ``i`` is encoded by an LSTM
into its last hidden state, and a second LSTM fed that state at every step
reconstructs the window. The raw score at ``i`` is the root-mean-square
reconstruction error of the window's last ``tail`` points (the newest ones, so
the score reacts to the point being scored rather than to old history),
divided by the root-mean-square of that same error over the validation windows
of the fit data. ``min_history = window``.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from eyenet.core.detectors.base import Constraint, as_series, interval
from eyenet.core.detectors.torch_common import TORCH_CONSTRAINTS, TorchDetector, predict, windows
from eyenet.core.errors import InvalidParameterError, NotEnoughDataError, NotFittedError


class _LSTMAutoencoderNet(nn.Module):
    """(batch, window) → (batch, window) through a ``hidden``-wide bottleneck."""

    def __init__(self, hidden: int, layers: int) -> None:
        super().__init__()
        self.encoder = nn.LSTM(1, hidden, layers, batch_first=True)
        self.decoder = nn.LSTM(hidden, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.encoder(x.unsqueeze(-1))
        code = h[-1].unsqueeze(1).expand(-1, x.shape[1], -1).contiguous()
        out, _ = self.decoder(code)
        return self.head(out).squeeze(-1)


class LSTMAutoencoder(TorchDetector):
    """Reconstruction-error detector (family ``lstm_ae``).

    ``window``: points per reconstructed window; ``hidden``: bottleneck width;
    ``layers``: LSTM layers of encoder and decoder; ``tail``: newest points
    whose error makes the score (1 ≤ tail ≤ window); the training parameters
    are those of the forecasters.
    """

    family: ClassVar[str] = "lstm_ae"
    _constraints: ClassVar[dict[str, Constraint]] = {**TORCH_CONSTRAINTS, "tail": interval(1, 4096, integer=True)}

    def __init__(
        self,
        *,
        window: int = 32,
        hidden: int = 16,
        layers: int = 1,
        lr: float = 3e-3,
        batch_size: int = 64,
        max_epochs: int = 40,
        patience: int = 5,
        val_fraction: float = 0.2,
        seed: int = 0,
        device: str = "auto",
        tail: int = 4,
    ) -> None:
        self.window = window
        self.hidden = hidden
        self.layers = layers
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.seed = seed
        self.device = device
        self.tail = tail

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.tail > self.window:
            raise InvalidParameterError(f"{self.family}: parameter tail={self.tail!r} must be at most window={self.window!r}")

    @property
    def min_history(self) -> int:
        return int(self.window)

    def _build_net(self) -> nn.Module:
        return _LSTMAutoencoderNet(int(self.hidden), int(self.layers))

    def _pairs(self, xn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = windows(xn, int(self.window))
        return w, w

    def _window_errors(self, outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        t = int(self.tail)
        return np.sqrt(np.mean((targets[:, -t:] - outputs[:, -t:]) ** 2, axis=1))

    def reconstruct(self, window_values: Any) -> np.ndarray:
        """Reconstruction of the last ``window`` points of ``window_values``, in original units."""
        if not self.is_fitted:
            raise NotFittedError(f"{self.family}: call fit() before reconstruct()")
        x = as_series(window_values, name="window_values")
        w = int(self.window)
        if len(x) < w:
            raise NotEnoughDataError(f"{self.family}: reconstruct needs at least {w} points, got {len(x)}")
        out = next(predict(self.net_, self.norm_.transform(x[-w:])[None, :], self.device_))[0]
        return self.norm_.inverse(out)


__all__ = ["LSTMAutoencoder"]
