"""The search objective and the search-space format (no Ray needed)."""
from __future__ import annotations

import numpy as np
import pytest

from eyenet.core import presets
from eyenet.lifecycle import tuning
from eyenet.core.errors import InvalidParameterError, NotEnoughDataError
from eyenet.core.model import AnomalyModel


def test_space_errors_name_the_bad_entry():
    with pytest.raises(InvalidParameterError, match="'windw' is not a parameter of 'cnn'"):
        tuning.check_space("cnn", {"windw": {"choice": [16]}})
    with pytest.raises(InvalidParameterError, match="unknown distribution 'normal'"):
        tuning.check_space("cnn", {"lr": {"normal": [0, 1]}})
    with pytest.raises(InvalidParameterError, match="not a valid range"):
        tuning.check_space("cnn", {"lr": {"loguniform": [0, 1e-2]}})
    with pytest.raises(InvalidParameterError, match="needs 2 numbers"):
        tuning.check_space("cnn", {"lr": {"uniform": [1e-3]}})
    with pytest.raises(InvalidParameterError, match="non-empty JSON object"):
        tuning.check_space("cnn", [])
    assert tuning.check_space("ensemble", {"weights.1": {"uniform": [0, 1]}, "rank.suppress": {"choice": [100]}})


def test_apply_sets_detector_params_model_settings_and_member_weights():
    base = presets.model_config("ensemble")
    config = tuning.apply("ensemble", base, {"weights.0": 0.5, "holdout": 0.25, "rank.suppress": 200,
                                             "alarm.threshold": np.float64(0.8)})
    model = AnomalyModel.from_dict(config)
    n = len(model.detector.member_configs)
    assert model.detector.combine == "weighted" and model.detector.weights == [0.5] + [1.0] * (n - 1)
    assert model.holdout == 0.25 and model.rank.suppress == 200 and model.alarm.threshold == 0.8
    assert model.rank.history == 5000  # untouched settings keep their defaults
    with pytest.raises(InvalidParameterError):
        tuning.apply("cnn", presets.model_config("cnn"), {"window": 1})


def test_injected_anomalies_are_labelled_and_found_by_a_simple_detector():
    rng = np.random.default_rng(0)
    x = 20 + np.sin(np.arange(2000) / 30) + rng.normal(0, 0.2, 2000)
    vs = tuning.with_injected("web", x, count=4, seed=1)
    assert vs.train_rows == 1000 and len(vs.windows) == 4
    assert not np.array_equal(vs.values, x) and np.array_equal(vs.values[:1000], x[:1000])
    assert all(lo >= 1000 for lo, _ in vs.windows)
    good = tuning.final_score(presets.model_config("zscore"), [vs])["nab_standard"]
    never = tuning.final_score(presets.model_config("zscore", {"window": 8}) | {"alarm": {"threshold": 1.0}}, [vs])
    assert good > 0 and good > never["nab_standard"] - 1e-9
    with pytest.raises(NotEnoughDataError):
        tuning.with_injected("short", x[:150])


def test_evaluate_reports_a_running_score_per_series_and_survives_infeasible_configs():
    series = tuning.from_synthetic(n=1200, metrics=("cpu_pct", "latency_ms"))
    steps = list(tuning.evaluate(presets.model_config("mad"), series))
    assert [s["series"] for s in steps] == [1.0, 2.0]
    assert all(-1000 < s["nab_standard"] <= 100 for s in steps)
    # a window longer than the training part cannot fit: counted as a failure, not a crash
    too_long = presets.model_config("mad", {"window": 1000})
    last = list(tuning.evaluate(too_long, series))[-1]
    assert last["failures"] == 2.0
