"""Default model configurations: the one place where the CLI's defaults are tuned.

:func:`model_config` turns a detector family name (and optional parameter
overrides) into an :class:`eyenet.core.model.AnomalyModel` config dict;
:data:`DEFAULT_SUITE` lists the families ``eyenet up`` trains.
"""
from __future__ import annotations

import copy
from typing import Any

from eyenet.core import detectors
from eyenet.core.errors import InvalidParameterError
from eyenet.core.synthetic import METRICS

#: families trained and compared by ``eyenet up`` (the ensemble is added on top)
DEFAULT_SUITE: list[str] = ["zscore", "mad", "iqr", "seasonal", "iforest", "lstm", "gru", "cnn", "transformer", "lstm_ae"]

#: ``eyenet up``: synthetic telemetry of seven days at five minutes, fixed seed,
#: the first quarter anomaly-free (training data), three anomalies per metric after it
UP_ROWS = 2016
UP_SEED = 7
UP_METRICS: list[str] = list(METRICS)
UP_TRAIN_FRACTION = 0.25
UP_ANOMALIES_PER_METRIC = 3
#: an alarm up to this many rows after an anomaly's last row still counts as detecting it
UP_TOLERANCE = 12

#: AnomalyModel settings besides the detector (holdout, tail_quantile, likelihood, alarm);
#: empty means the AnomalyModel defaults
MODEL_DEFAULTS: dict[str, Any] = {}

#: per-family parameter defaults applied before the caller's overrides
DETECTOR_DEFAULTS: dict[str, dict[str, Any]] = {}


def model_config(detector: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """AnomalyModel config for family ``detector`` with ``params`` overriding its defaults.

    The family name and the parameters are checked through the registry, so an
    unknown family raises :class:`~eyenet.core.errors.UnknownNameError` and an unknown
    or out-of-range parameter :class:`~eyenet.core.errors.InvalidParameterError`.
    """
    if params is not None and not isinstance(params, dict):
        raise InvalidParameterError(f"{detector}: parameters must be a JSON object, got {type(params).__name__}")
    merged = {**copy.deepcopy(DETECTOR_DEFAULTS.get(detector, {})), **(params or {})}
    det = detectors.create(detector, **merged)  # validates name and parameters
    return {**copy.deepcopy(MODEL_DEFAULTS), "detector": det.to_dict()}


def alarm_threshold() -> float:
    """The configured alarm threshold of the default model (a fitted model may alarm lower, see
    :attr:`eyenet.core.model.AnomalyModel.threshold`): ``eyenet evaluate``'s own threshold."""
    from eyenet.core.model import AnomalyModel

    return float(AnomalyModel.from_dict(model_config(DEFAULT_SUITE[0])).alarm.threshold)
