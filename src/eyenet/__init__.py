"""EyeNet: anomaly detection for operational time series.

The library API, for notebooks and scripts (no Ray, no server)::

    import eyenet

    series = eyenet.read_series("cpu.csv")             # timestamp,value (.csv or .parquet)
    model = eyenet.fit(series.values[:2000])           # the default ensemble; detector="zscore", ...
    scores = model.score(series.values)                # .score in [0, 1] (NaN: not ready), .alarm
    stream = model.stream()                            # one point at a time, as /v1/stream does
    point = stream.score_one(97.5)                     # .score, .alarm, .ready
    served = eyenet.load_model("default.cpu-pct.ensemble")   # a registered version (alias champion)

Names are imported on first use, so ``import eyenet`` stays cheap.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("eyenet")  # one source: pyproject.toml
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["AnomalyModel", "PointScore", "Scores", "Series", "Stream", "detectors", "fit", "load_model",
           "read_series"]

_LAZY = {
    "AnomalyModel": ("eyenet.core.model", "AnomalyModel"),
    "Scores": ("eyenet.core.model", "Scores"),
    "Stream": ("eyenet.core.stream", "Stream"),
    "PointScore": ("eyenet.core.stream", "PointScore"),
    "Series": ("eyenet.core.data", "Series"),
    "read_series": ("eyenet.core.data", "read_series"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'eyenet' has no attribute {name!r}")


def detectors() -> list[str]:
    """The detector families that can be fitted (built-in and plugged in through entry points)."""
    from eyenet.core import detectors as registry

    return registry.available()


def fit(values: Any, detector: str = "ensemble", **params: Any) -> Any:
    """A model of family ``detector`` (default settings, ``params`` overriding the detector's own)
    fitted on ``values``: the head trains the detector, the tail calibrates its scores."""
    from eyenet.core import presets
    from eyenet.core.model import AnomalyModel

    return AnomalyModel.from_dict(presets.model_config(detector, params or None)).fit(values)


def load_model(name: str, *, version: int | None = None, alias: str | None = "champion",
               mlflow_uri: str | None = None) -> Any:
    """A registered model (``<tenant>.<group>.<family>``) from MLflow: by ``version``, else by
    ``alias``; ``mlflow_uri`` defaults to ``EYENET_MLFLOW_URI``, else the embedded store under ``.eyenet/``."""
    from eyenet.lifecycle.registry import Registry

    return Registry(mlflow_uri).load(name, version=version, alias=None if version is not None else alias)
