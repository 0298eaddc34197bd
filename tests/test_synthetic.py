"""The synthetic telemetry generator: realistic clean series, labelled anomalies, determinism."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eyenet.core import synthetic
from eyenet.core.errors import EyenetError, InvalidParameterError, NotEnoughDataError, UnknownNameError
from eyenet.core.synthetic import ANOMALY_KINDS, METRICS, InjectedAnomaly, generate, series

FLOOR = {"latency_ms": 0.1, "temperature_c": -np.inf}  # everything else: 0


@pytest.fixture(scope="module")
def telemetry():
    return generate(seed=7)


@pytest.fixture(scope="module")
def clean():
    return generate(seed=7, anomalies_per_metric=0)


def _noise(clean_values: np.ndarray, start: int) -> float:
    w = clean_values[start - synthetic.LOCAL_WINDOW : start]
    return float(np.diff(w).std() / np.sqrt(2.0))


def test_default_shape_columns_and_timestamps(telemetry):
    f = telemetry.frame
    assert list(f.columns) == ["timestamp", *METRICS]
    assert len(f) == 4032
    assert pd.api.types.is_datetime64_any_dtype(f["timestamp"])
    assert f["timestamp"].iloc[0] == pd.Timestamp("2026-01-05")
    assert (f["timestamp"].diff().iloc[1:] == pd.Timedelta("5min")).all()
    assert np.isfinite(f[list(METRICS)].to_numpy()).all()


def test_same_seed_gives_identical_telemetry():
    a, b = generate(seed=11, n=1500), generate(seed=11, n=1500)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    assert a.anomalies == b.anomalies


def test_different_seeds_differ():
    a, b = generate(seed=1, n=1500), generate(seed=2, n=1500)
    for m in METRICS:
        assert not np.allclose(a.frame[m], b.frame[m])
    assert a.anomalies != b.anomalies


def test_anomalies_are_in_range_non_overlapping_and_after_the_clean_prefix(telemetry):
    n = len(telemetry.frame)
    first_allowed = int(np.ceil(0.25 * n))
    for m in METRICS:
        anomalies = telemetry.anomalies[m]
        assert len(anomalies) == 3
        assert len({a.kind for a in anomalies}) == 3  # distinct kinds when there are enough
        for a in anomalies:
            assert a.kind in ANOMALY_KINDS
            assert first_allowed <= a.start < a.end <= n
        for prev, nxt in zip(anomalies, anomalies[1:]):
            assert prev.end <= nxt.start


def test_labels_mark_exactly_the_anomalous_rows(telemetry):
    for m in METRICS:
        labels = telemetry.labels(m)
        assert labels.dtype == bool and len(labels) == len(telemetry.frame)
        assert labels.sum() == sum(len(a) for a in telemetry.anomalies[m])
        for a in telemetry.anomalies[m]:
            assert labels[a.start : a.end].all()
            assert not labels[a.start - 1]
    with pytest.raises(UnknownNameError, match="disk_pct"):
        telemetry.labels("disk_pct")


def test_rows_outside_anomalies_equal_the_clean_baseline(telemetry, clean):
    for m in METRICS:
        normal = ~telemetry.labels(m)
        np.testing.assert_array_equal(telemetry.frame[m].to_numpy()[normal], clean.frame[m].to_numpy()[normal])
        assert not np.array_equal(telemetry.frame[m].to_numpy(), clean.frame[m].to_numpy())
    assert all(v == [] for v in clean.anomalies.values())


def test_a_metric_is_the_same_whichever_other_metrics_are_requested(telemetry):
    alone = generate(seed=7, metrics=("cpu_pct",))
    np.testing.assert_array_equal(alone.frame["cpu_pct"], telemetry.frame["cpu_pct"])
    assert alone.anomalies["cpu_pct"] == telemetry.anomalies["cpu_pct"]
    ts, values, labels = series("latency_ms", seed=7)
    np.testing.assert_array_equal(values, telemetry.frame["latency_ms"].to_numpy())
    np.testing.assert_array_equal(labels, telemetry.labels("latency_ms"))
    assert len(ts) == len(values) and np.issubdtype(ts.dtype, np.datetime64)


def test_bytes_track_packets_at_about_800_bytes_each(clean):
    f = clean.frame
    for direction in ("in", "out"):
        b, p = f[f"bytes_{direction}"].to_numpy(), f[f"packets_{direction}"].to_numpy()
        assert np.corrcoef(b, p)[0, 1] > 0.98
        assert 700 < np.median(b / p) < 900


def test_daily_and_weekly_seasonality(clean):
    f = clean.frame
    hour = f["timestamp"].dt.hour
    weekend = f["timestamp"].dt.day_of_week >= 5
    traffic = f["bytes_in"]
    assert traffic[~weekend & hour.between(13, 16)].mean() > 2.0 * traffic[~weekend & hour.between(2, 5)].mean()
    assert traffic[weekend].mean() < 0.8 * traffic[~weekend].mean()
    # temperature follows load, so it correlates with cpu
    assert np.corrcoef(f["temperature_c"], f["cpu_pct"])[0, 1] > 0.8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_stay_physically_plausible(seed):
    """Counts never negative, percentages in [0, 100], latency positive and right-skewed, and only rising when anomalous."""
    f = generate(seed=seed).frame
    for m in ("bytes_in", "bytes_out", "packets_in", "packets_out"):
        assert (f[m] >= 0).all()
    for m in ("cpu_pct", "mem_pct"):
        assert f[m].between(0, 100).all()
    assert (f["latency_ms"] > 0).all()
    lat = f["latency_ms"].to_numpy()
    assert np.mean(lat) > np.median(lat)  # right-skewed


def _kind_cases(kind: str):
    """(metric, anomaly, values, clean values, noise, value before, biggest drop) per anomaly of one kind.

    Downward anomalies take at most 80 % of the expected level above the
    metric's floor, so "biggest drop" is min(5 noise levels, a safe share of it).
    """
    for seed in (3, 4):
        t = generate(seed=seed, kinds=(kind,))
        c = generate(seed=seed, anomalies_per_metric=0)
        for m in METRICS:
            x, x0 = t.frame[m].to_numpy(), c.frame[m].to_numpy()
            for a in t.anomalies[m]:
                assert a.kind == kind
                sigma = _noise(x0, a.start)
                headroom = x0[a.start : a.end].min() - FLOOR.get(m, 0.0)
                drop = min(5.0 * sigma, 0.4 * headroom)
                yield m, a, x[a.start : a.end], x0[a.start : a.end], sigma, x0[a.start - 1], drop


def _at_floor(m: str, v: np.ndarray) -> np.ndarray:
    return v <= FLOOR.get(m, 0.0) + 1e-9


def test_spike_rises_at_least_five_local_noise_levels_for_a_few_rows():
    for m, a, x, x0, sigma, _, _ in _kind_cases("spike"):
        assert 1 <= len(a) <= 3
        assert np.all(x - x0 >= 5.0 * sigma), (m, a)


def test_dip_drops_at_least_five_local_noise_levels_or_to_the_floor():
    for m, a, x, x0, sigma, _, drop in _kind_cases("dip"):
        assert len(a) <= 6
        assert np.all((x - x0 <= -drop) | _at_floor(m, x)), (m, a)


def test_level_shift_moves_a_long_stretch_by_a_constant_offset():
    for m, a, x, x0, sigma, _, drop in _kind_cases("level_shift"):
        assert len(a) >= 144  # at least half a day at 5-minute steps
        d = (x - x0)[~_at_floor(m, x)]
        assert np.median(d) >= 3.5 * sigma or np.median(d) <= -min(3.5 * sigma, drop), (m, a)
        assert np.allclose(d, np.median(d), rtol=1e-9, atol=1e-9 * np.abs(x0).max()), (m, a)


def test_drift_ramps_slowly_to_a_peak_and_back():
    for m, a, x, x0, sigma, _, drop in _kind_cases("drift"):
        d = x - x0
        ok = ~_at_floor(m, x)
        peak = int(np.argmax(np.abs(d)))
        assert d[peak] >= 5.0 * sigma or d[peak] <= -drop, (m, a)
        assert 0.6 * len(d) <= peak <= 0.9 * len(d), (m, a)
        assert abs(d[0]) < 0.05 * abs(d[peak]) and abs(d[-1]) < 0.05 * abs(d[peak])
        steps = np.abs(np.diff(d))[ok[1:] & ok[:-1]]
        assert steps.max() <= 0.05 * abs(d[peak]) + 1e-9, (m, a)  # a ramp, not a jump


def test_variance_multiplies_the_noise():
    for m, a, x, x0, sigma, _, _ in _kind_cases("variance"):
        assert len(a) >= 12
        assert np.std(x - x0) >= 2.0 * sigma, (m, a)


def test_stuck_repeats_the_last_value_before_it():
    for m, a, x, x0, _, before, _ in _kind_cases("stuck"):
        assert np.all(x == before), (m, a)
        assert np.std(x0) > 0


def _smooth(v: np.ndarray, k: int = 24) -> np.ndarray:
    return np.convolve(v, np.full(k, 1.0 / k), mode="valid")


def test_seasonality_break_flattens_the_daily_pattern():
    for m, a, x, x0, _, _, _ in _kind_cases("seasonality_break"):
        assert len(a) >= 288  # at least a day
        assert np.ptp(_smooth(x)) < 0.6 * np.ptp(_smooth(x0)), (m, a)
        assert abs(np.mean(x) - np.mean(x0)) < 0.25 * np.ptp(x0)  # level kept, shape removed


def test_every_kind_can_be_requested_more_often_than_once():
    t = generate(seed=5, kinds=("spike",), anomalies_per_metric=4, metrics=("cpu_pct",))
    assert [a.kind for a in t.anomalies["cpu_pct"]] == ["spike"] * 4


def test_other_frequencies_scale_anomaly_lengths():
    t = generate(n=24 * 30, freq="1h", seed=0, kinds=("seasonality_break",), metrics=("packets_in",))
    (a, *_) = t.anomalies["packets_in"]
    assert 24 <= len(a) <= 36
    assert t.frame["timestamp"].diff().iloc[1] == pd.Timedelta("1h")


def test_injected_anomaly_is_frozen():
    a = InjectedAnomaly(kind="spike", start=3, end=5)
    assert len(a) == 2
    with pytest.raises(AttributeError):
        a.start = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"metrics": ("cpu_pct", "disk_pct")}, InvalidParameterError, "disk_pct"),
        ({"metrics": ()}, InvalidParameterError, "metrics"),
        ({"kinds": ("spike", "wobble")}, InvalidParameterError, "wobble"),
        ({"n": 10}, NotEnoughDataError, "n"),
        ({"n": 300, "anomalies_per_metric": 20}, NotEnoughDataError, "anomalies_per_metric"),
        ({"n": 100.0}, InvalidParameterError, "n"),
        ({"freq": "MS"}, InvalidParameterError, "freq"),
        ({"freq": "0min"}, InvalidParameterError, "freq"),
        ({"start": "not a date"}, InvalidParameterError, "start"),
        ({"anomaly_free_prefix": 1.0}, InvalidParameterError, "anomaly_free_prefix"),
        ({"anomalies_per_metric": -1}, InvalidParameterError, "anomalies_per_metric"),
        ({"seed": "x"}, InvalidParameterError, "seed"),
    ],
)
def test_bad_arguments_raise_a_named_eyenet_error(kwargs, error, names):
    with pytest.raises(error, match=names) as info:
        generate(**kwargs)
    assert isinstance(info.value, EyenetError)


def test_series_rejects_unknown_metric():
    with pytest.raises(InvalidParameterError, match="disk_pct"):
        series("disk_pct")
