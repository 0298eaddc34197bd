"""The seasonal baseline family: cycle detection, expected values, causal streaming."""
from __future__ import annotations

import numpy as np
import pytest

from eyenet.core import detectors
from eyenet.core.detectors.seasonal import Seasonal, find_period
from eyenet.core.errors import InvalidParameterError
from eyenet.core.model import AnomalyModel


def cycle(n: int, period: int, *, noise: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 10 + np.sin(2 * np.pi * t / period) + 0.5 * np.sin(4 * np.pi * t / period) + noise * rng.standard_normal(n)


@pytest.mark.parametrize("period", [12, 48, 96])
def test_finds_the_cycle_length(period: int) -> None:
    x = cycle(5 * period, period)
    assert find_period(x) == period
    det = Seasonal().fit(x)
    assert det.period_ == period
    assert det.min_history == period + 1
    assert det.context == det.cycles * period + 1


def test_no_cycle_in_noise_falls_back_to_the_level() -> None:
    x = 5 + np.random.default_rng(1).standard_normal(400)
    det = Seasonal().fit(x)
    assert det.period_ == 0
    assert det.min_history == 1 and det.context == 1
    s = det.score(np.array([5.0, 5.0 + 10 * det.scale_]))
    np.testing.assert_allclose(s, [abs(5.0 - det.center_) / det.scale_, abs(5.0 + 10 * det.scale_ - det.center_) / det.scale_])


def test_fixed_period_is_used_as_given() -> None:
    det = Seasonal(period=7).fit(cycle(300, 48))
    assert det.period_ == 7


def test_expected_value_is_the_mean_of_past_cycles() -> None:
    det = Seasonal(period=4, cycles=3).fit(cycle(200, 4))
    x = np.arange(20, dtype=float)
    s = det.score(x)
    # position 13: values 9, 5, 1 one, two and three periods earlier -> mean 5
    assert s[13] == pytest.approx(abs(13 - 5) / det.scale_)
    # position 5: only 1 (one period earlier) exists -> expected 1
    assert s[5] == pytest.approx(abs(5 - 1) / det.scale_)
    assert np.isnan(s[:4]).all() and np.isfinite(s[4:]).all()


def test_a_missing_day_stands_out_where_a_one_step_view_would_adapt() -> None:
    period = 48
    x = cycle(20 * period, period, seed=2)
    det = Seasonal().fit(x[: 6 * period])
    flat = x.copy()
    day = slice(15 * period, 16 * period)
    flat[day] = x[day].mean()  # the cycle stops for a day: every value stays within the usual range
    s = det.score(flat)
    normal = det.score(x)
    assert np.nanmedian(s[day]) > 5 * np.nanmedian(normal[6 * period :])


def test_stream_point_by_point_equals_one_shot_with_long_context() -> None:
    x = cycle(1200, 24, seed=3)
    x[900] += 4.0
    model = AnomalyModel(Seasonal()).fit(x[:300])
    assert model.detector.context > model.detector.min_history
    whole = model.score(x).score
    state, parts = None, []
    for i in range(0, len(x), 37):
        out, state = model.score_stream(x[i : i + 37], state)
        parts.append(out.score)
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-12, equal_nan=True)
    assert len(state.values) == model.detector.context - 1
    assert np.nanargmax(whole[300:]) + 300 == 900


@pytest.mark.parametrize("params", [dict(cycles=0), dict(period=-1), dict(min_corr=1.5), dict(min_period=1)])
def test_bad_parameters_are_rejected(params: dict) -> None:
    with pytest.raises(InvalidParameterError):
        detectors.create("seasonal", **params)
