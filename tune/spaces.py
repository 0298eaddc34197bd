"""Default search spaces (JSON form, see :mod:`eyenet.lifecycle.tuning`) and their Ray Tune domains."""
from __future__ import annotations

from typing import Any

from eyenet.lifecycle.tuning import check_space

_TORCH = {
    "window": {"choice": [16, 32, 64]},
    "hidden": {"choice": [16, 32, 64]},
    "layers": {"choice": [1, 2]},
    "lr": {"loguniform": [3e-4, 1e-2]},
}
_POST = {
    "tail_quantile": {"uniform": [0.8, 0.97]},
    "rank.suppress": {"choice": [200, 500, 1000]},
    "alarm.threshold": {"uniform": [0.5, 0.9]},
}
_WINDOW = {"window": {"choice": [16, 32, 64, 128, 256]}}

DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "zscore": {**_WINDOW, **_POST},
    "mad": {**_WINDOW, **_POST},
    "iqr": {**_WINDOW, **_POST},
    "iforest": {**_WINDOW, "n_estimators": {"choice": [50, 100, 200]}, "max_samples": {"choice": [128, 256, 512]}, **_POST},
    "lstm": {**_TORCH, **_POST},
    "gru": {**_TORCH, **_POST},
    "cnn": {**_TORCH, **_POST},
    "transformer": {**_TORCH, **_POST},
    "lstm_ae": {**_TORCH, "tail": {"choice": [1, 4, 8]}, **_POST},
    "ensemble": {
        "weights.0": {"uniform": [0.5, 4.0]},  # default members: seasonal, lstm (3 : 1)
        "weights.1": {"uniform": [0.5, 2.0]},
        "holdout": {"uniform": [0.2, 0.4]},
        **_POST,
    },
}


def default_space(family: str) -> dict[str, Any]:
    return check_space(family, DEFAULT_SPACES.get(family, _POST))


def to_tune(space: dict[str, Any]) -> dict[str, Any]:
    """JSON space -> Ray Tune search domains (keys with dots stay flat)."""
    from ray import tune

    out = {}
    for key, dist in space.items():
        (kind, args), = dist.items()
        out[key] = {
            "choice": lambda a: tune.choice(a),
            "uniform": lambda a: tune.uniform(a[0], a[1]),
            "loguniform": lambda a: tune.loguniform(a[0], a[1]),
            "randint": lambda a: tune.randint(int(a[0]), int(a[1])),
            "quniform": lambda a: tune.quniform(a[0], a[1], a[2]),
        }[kind](args)
    return out
