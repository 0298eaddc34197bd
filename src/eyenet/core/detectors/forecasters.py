"""One-step-ahead neural forecasters; the anomaly score is the forecast residual.

Each family reads the ``window`` points before position ``i`` and forecasts
``x[i]``. The raw score at ``i`` is ``|x[i] - forecast| / s`` where ``s`` is
the root-mean-square residual on the validation part of the fit data (the last
``val_fraction`` of the windows, never trained on), so 1 means "an ordinary
miss" and the score is comparable across series. The first ready score is at
index ``window`` (``min_history = window + 1``).

Families: ``lstm`` and ``gru`` (recurrent, last hidden state → linear),
``cnn`` (causal dilated 1-D convolutions → linear over the window),
``transformer`` (a tiny encoder with sinusoidal positions; the last token
forecasts). Forecasts are also served through :meth:`TorchForecaster.forecast`
and :meth:`TorchForecaster.forecast_next`.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from eyenet.core.detectors.base import Constraint, as_series, interval
from eyenet.core.detectors.torch_common import TORCH_CONSTRAINTS, TorchDetector, predict, windows
from eyenet.core.errors import NotEnoughDataError, NotFittedError


class TorchForecaster(TorchDetector):
    """Common parameters and scoring of the one-step forecasters.

    ``window``: points the forecast reads; ``hidden``: width (``d_model`` for
    the transformer); ``layers``: recurrent / convolutional / encoder layers;
    ``lr``, ``batch_size``, ``max_epochs``, ``patience``, ``val_fraction``:
    training (Adam, early stopping on the chronological validation split);
    ``seed``: makes ``fit`` reproducible; ``device``: ``auto`` | ``cpu`` | ``cuda``.
    """

    expects = True
    _constraints: ClassVar[dict[str, Constraint]] = dict(TORCH_CONSTRAINTS)

    def __init__(
        self,
        *,
        window: int = 32,
        hidden: int = 32,
        layers: int = 1,
        lr: float = 3e-3,
        batch_size: int = 64,
        max_epochs: int = 40,
        patience: int = 5,
        val_fraction: float = 0.2,
        seed: int = 0,
        device: str = "auto",
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

    @property
    def min_history(self) -> int:
        return int(self.window) + 1

    def _pairs(self, xn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = int(self.window)
        if len(xn) == w + 1:  # one window (the real-time path): skip the strided view
            return xn[None, :w], xn[w:]
        return windows(xn[:-1], w), xn[w:]

    def _window_errors(self, outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return np.abs(targets - outputs)

    def score_last(self, window: Any) -> float:
        """Raw score of the last point of ``window``: the real-time path, the operations of
        :meth:`score` on one window (same numbers) without its intermediate arrays."""
        if not self.is_fitted:
            return super().score_last(window)  # raises NotFittedError
        x = as_series(window)
        w = int(self.window)
        if len(x) <= w:
            return float("nan")
        xn = self.norm_.transform(x[-w - 1 :])
        forecast = float(self._forward_one(xn[None, :w])[0])
        return abs(float(xn[w]) - forecast) / self.score_scale_

    # -- forecasts ---------------------------------------------------------------------------
    def forecast(self, values: Any) -> np.ndarray:
        """One-step forecasts aligned with ``values``, in original units.

        ``out[i]`` forecasts ``values[i]`` from ``values[i - window : i]`` for
        ``i >= window``; earlier positions are NaN. The forecast after the last
        value is :meth:`forecast_next`.
        """
        self._check_fitted("forecast")
        x = as_series(values)
        out = np.full(len(x), np.nan)
        w = int(self.window)
        if len(x) > w:
            xn = self.norm_.transform(x)
            out[w:] = self.norm_.inverse(np.concatenate(list(predict(self.net_, windows(xn[:-1], w), self.device_))))
        return out

    def expected_many(self, windows: list[np.ndarray], n_new: list[int]) -> list[np.ndarray]:
        """The one-step forecasts of the new points."""
        if not self.is_fitted:
            return super().expected_many(windows, n_new)
        return [self.forecast(w)[len(w) - n :] for w, n in zip(windows, n_new)]

    @property
    def raw_unit(self) -> float | None:
        """Raw scores are absolute errors in normalised units over the validation RMS error."""
        return float(self.score_scale_ * self.norm_.scale) if self.is_fitted else None

    def forecast_next(self, window_values: Any) -> float:
        """Forecast of the value after ``window_values`` (its last ``window`` points are used)."""
        self._check_fitted("forecast_next")
        x = as_series(window_values, name="window_values")
        w = int(self.window)
        if len(x) < w:
            raise NotEnoughDataError(f"{self.family}: forecast_next needs at least {w} points, got {len(x)}")
        xn = self.norm_.transform(x[-w:])[None, :]
        return float(self.norm_.inverse(next(predict(self.net_, xn, self.device_))[0]))

    def _check_fitted(self, what: str) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{self.family}: call fit() before {what}()")


# -- networks: (batch, window) normalised values -> (batch,) next value ------------------------
class _RecurrentNet(nn.Module):
    def __init__(self, cell: type[nn.LSTM] | type[nn.GRU], hidden: int, layers: int) -> None:
        super().__init__()
        self.rnn = cell(1, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.unsqueeze(-1))
        return self.head(out[:, -1]).squeeze(-1)


class _CausalConvNet(nn.Module):
    """Dilated causal convolutions (kernel 3, dilation 1, 2, 4, ...) then a linear map over the window."""

    kernel = 3

    def __init__(self, window: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(1 if k == 0 else hidden, hidden, self.kernel, dilation=2**k) for k in range(layers)
        )
        self.pads = [(self.kernel - 1) * 2**k for k in range(layers)]
        self.head = nn.Linear(hidden * window, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(1)
        for conv, pad in zip(self.convs, self.pads):
            h = F.relu(conv(F.pad(h, (pad, 0))))
        return self.head(h.flatten(1)).squeeze(-1)


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10_000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
    return pe


class _TransformerNet(nn.Module):
    def __init__(self, window: int, d_model: int, layers: int) -> None:
        super().__init__()
        heads = 4 if d_model % 4 == 0 else 2 if d_model % 2 == 0 else 1
        self.embed = nn.Linear(1, d_model)
        self.register_buffer("positions", sinusoidal_positions(window, d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x.unsqueeze(-1)) + self.positions)
        return self.head(h[:, -1]).squeeze(-1)


# -- families ------------------------------------------------------------------------------------
class LSTMForecaster(TorchForecaster):
    """LSTM over the window; the last hidden state forecasts the next value."""

    family: ClassVar[str] = "lstm"

    def _build_net(self) -> nn.Module:
        return _RecurrentNet(nn.LSTM, int(self.hidden), int(self.layers))


class GRUForecaster(TorchForecaster):
    """GRU over the window; the last hidden state forecasts the next value."""

    family: ClassVar[str] = "gru"

    def _build_net(self) -> nn.Module:
        return _RecurrentNet(nn.GRU, int(self.hidden), int(self.layers))


class CNNForecaster(TorchForecaster):
    """``layers`` causal dilated convolutions with ``hidden`` channels, then a linear forecast."""

    family: ClassVar[str] = "cnn"

    def _build_net(self) -> nn.Module:
        return _CausalConvNet(int(self.window), int(self.hidden), int(self.layers))


class TransformerForecaster(TorchForecaster):
    """Tiny transformer encoder (``hidden`` = d_model, 4/2/1 heads, no dropout); the last token forecasts."""

    family: ClassVar[str] = "transformer"
    _constraints: ClassVar[dict[str, Constraint]] = {
        **TORCH_CONSTRAINTS,
        "hidden": interval(4, 256, integer=True),
        "layers": interval(1, 4, integer=True),
    }

    def _build_net(self) -> nn.Module:
        return _TransformerNet(int(self.window), int(self.hidden), int(self.layers))


__all__ = ["CNNForecaster", "GRUForecaster", "LSTMForecaster", "TorchForecaster", "TransformerForecaster"]
