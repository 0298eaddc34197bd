"""Feature extraction: matches naive per-window numpy, is causal, and validates its inputs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eyenet.core import features as F
from eyenet.core.errors import EyenetError, InvalidInputError, InvalidParameterError, NotEnoughDataError, UnknownNameError
from eyenet.core.synthetic import generate


def _naive_window_stats(x: np.ndarray, w: int) -> np.ndarray:
    rows = []
    for end in range(w, len(x) + 1):
        win = x[end - w : end]
        others, last = win[:-1], win[-1]
        mo, so = others.mean(), others.std()
        tol = F._REL_TOL * max(abs(mo), abs(last))
        if so <= tol:
            z = 0.0 if abs(last - mo) <= tol else np.sign(last - mo) * F.Z_CAP
        else:
            z = np.clip((last - mo) / so, -F.Z_CAP, F.Z_CAP)
        slope = np.polyfit(np.arange(w), win, 1)[0]
        rows.append([win.mean(), win.std(), win.min(), win.max(), np.percentile(win, 75), z, slope])
    return np.array(rows)


@pytest.fixture(scope="module")
def rough_series() -> np.ndarray:
    """Random walk plus noise, with outliers, a constant stretch and a jump out of it."""
    rng = np.random.default_rng(42)
    x = 1_000.0 + np.cumsum(rng.normal(size=600)) + rng.standard_t(3, size=600)
    x[[50, 51, 300]] += [40.0, -60.0, 500.0]
    x[400:450] = x[399]
    x[450] = x[399] + 5.0
    return x


@pytest.mark.parametrize("w", [2, 3, 16, 64])
def test_window_stats_match_a_naive_per_window_computation(rough_series, w):
    got = F.window_stats(rough_series, w)
    assert got.shape == (len(rough_series) - w + 1, len(F.WINDOW_STAT_NAMES))
    np.testing.assert_allclose(got, _naive_window_stats(rough_series, w), rtol=1e-7, atol=1e-7)


def test_window_stats_are_exact_for_a_constant_series_at_a_large_offset():
    x = np.full(200, 3.0e9)
    stats = F.window_stats(x, 32)
    np.testing.assert_array_equal(stats[:, 1], 0.0)  # std
    np.testing.assert_array_equal(stats[:, 5], 0.0)  # last_z: no surprise
    np.testing.assert_allclose(stats[:, 6], 0.0, atol=1e-3)  # slope


def test_last_z_flags_a_jump_out_of_a_flat_window_with_the_capped_value():
    x = np.r_[np.full(20, 7.0), 8.0, 6.0]
    z = F.window_stats(x, 10)[:, 5]
    assert z[-2] == F.Z_CAP and z[-1] < -1.0


def test_window_view_is_every_trailing_window():
    x = np.arange(10.0)
    v = F.window_view(x, 4)
    assert v.shape == (7, 4)
    np.testing.assert_array_equal(v[0], [0, 1, 2, 3])
    np.testing.assert_array_equal(v[-1], [6, 7, 8, 9])


def test_rolling_mean_std_are_trailing_and_nan_until_full(rough_series):
    mean, std = F.rolling_mean_std(rough_series, 24)
    wins = [rough_series[i - 23 : i + 1] for i in range(23, len(rough_series))]
    np.testing.assert_allclose(mean[23:], [w.mean() for w in wins], rtol=1e-12)
    np.testing.assert_allclose(std[23:], [w.std() for w in wins], rtol=1e-9, atol=1e-12)
    assert np.isnan(mean[:23]).all() and np.isnan(std[:23]).all()
    # exact on the constant stretch, where running-sum implementations leave residue
    np.testing.assert_array_equal(std[422:450], 0.0)


def test_trend_slope_recovers_a_line_and_is_nan_until_full():
    x = 5.0 - 0.25 * np.arange(100) + np.sin(np.arange(100)) * 0  # exact line
    slope = F.trend_slope(x, 10)
    assert np.isnan(slope[:9]).all()
    np.testing.assert_allclose(slope[9:], -0.25)


def test_seasonality_strength_separates_cycles_from_noise():
    rng = np.random.default_rng(0)
    t = np.arange(24 * 30)
    cycle = 10 * np.sin(2 * np.pi * t / 24) + 0.01 * t + rng.normal(size=t.size)
    assert F.seasonality_strength(cycle, 24) > 0.9
    assert F.seasonality_strength(rng.normal(size=t.size), 24) < 0.1
    assert F.seasonality_strength(np.full(100, 3.0), 10) == 0.0
    traffic = generate(seed=0, anomalies_per_metric=0).frame["packets_in"].to_numpy()
    assert F.seasonality_strength(traffic, 288) > 0.8


def test_time_features_of_known_timestamps():
    ts = pd.to_datetime(["2026-01-05 06:00", "2026-01-10 18:30", "2026-01-11 00:00"])  # Mon, Sat, Sun
    tf = F.time_features(ts)
    assert list(tf.columns) == list(F.TIME_FEATURE_NAMES)
    assert tf["hour"].tolist() == [6, 18, 0]
    assert tf["weekday"].tolist() == [0, 5, 6]
    assert tf["is_weekend"].tolist() == [0, 1, 1]
    np.testing.assert_allclose(tf[["hour_sin", "hour_cos"]].iloc[0], [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(tf[["hour_sin", "hour_cos"]].iloc[2], [0.0, 1.0], atol=1e-12)


def test_ratio_turns_division_by_zero_into_zero():
    r = F.ratio(pd.Series([800.0, 0.0, 50.0]), np.array([1.0, 0.0, 0.0]), "bytes_per_packet")
    assert r.name == "bytes_per_packet"
    assert r.tolist() == [800.0, 0.0, 0.0]
    assert np.isfinite(r).all()


def test_derived_ratios_added_only_when_both_columns_exist():
    frame = pd.DataFrame({"bytes_in": [1600.0, 0.0], "packets_in": [2.0, 0.0], "bytes_out": [5.0, 6.0]})
    out = F.derived_ratios(frame)
    assert out["bytes_per_packet_in"].tolist() == [800.0, 0.0]
    assert "bytes_per_packet_out" not in out
    assert "bytes_per_packet_in" not in frame  # input left alone


@pytest.fixture(scope="module")
def telemetry_frame() -> pd.DataFrame:
    return generate(n=600, seed=3, anomalies_per_metric=1).frame


def test_build_features_layout_for_a_multivariate_frame(telemetry_frame):
    w = 16
    feats = F.build_features(telemetry_frame, window=w)
    assert feats.index.equals(telemetry_frame.index)
    value_columns = [c for c in telemetry_frame.columns if c != "timestamp"] + ["bytes_per_packet_in", "bytes_per_packet_out"]
    for c in value_columns:
        for suffix in ("", "_diff", *(f"_{s}" for s in F.WINDOW_STAT_NAMES)):
            assert f"{c}{suffix}" in feats
    for c in F.TIME_FEATURE_NAMES:
        assert c in feats
    assert feats.iloc[: w - 1].isna().all().all()
    assert not feats.iloc[w - 1 :].isna().any().any()
    np.testing.assert_allclose(
        feats["cpu_pct_p75"].iloc[w - 1 :], F.window_stats(telemetry_frame["cpu_pct"].to_numpy(), w)[:, 4]
    )


def test_build_features_for_a_univariate_series_without_timestamps():
    s = pd.Series(np.random.default_rng(1).normal(size=50), name="latency_ms")
    feats = F.build_features(s, window=8)
    assert feats.columns[0] == "latency_ms"
    assert "hour" not in feats and "bytes_per_packet_in" not in feats
    assert len(feats.columns) == 2 + len(F.WINDOW_STAT_NAMES)


def test_build_features_take_time_from_a_datetime_index(telemetry_frame):
    frame = telemetry_frame.set_index("timestamp")[["cpu_pct"]]
    feats = F.build_features(frame, window=8)
    assert feats.loc[feats.index[20], "hour"] == feats.index[20].hour


def test_changing_a_point_never_changes_earlier_features(telemetry_frame):
    j = 300
    changed = telemetry_frame.copy()
    changed.loc[j, "packets_in"] *= 3.0
    before = F.build_features(telemetry_frame, window=32)
    after = F.build_features(changed, window=32)
    pd.testing.assert_frame_equal(before.iloc[:j], after.iloc[:j])
    assert not np.allclose(before.loc[j, "packets_in_last_z"], after.loc[j, "packets_in_last_z"])
    assert not np.allclose(before.loc[j, "bytes_per_packet_in"], after.loc[j, "bytes_per_packet_in"])


def test_features_of_a_prefix_equal_the_same_rows_of_the_whole(telemetry_frame):
    whole = F.build_features(telemetry_frame, window=32)
    prefix = F.build_features(telemetry_frame.iloc[:100], window=32)
    pd.testing.assert_frame_equal(prefix, whole.iloc[:100], rtol=1e-12)


def test_window_stats_are_causal(rough_series):
    x2 = rough_series.copy()
    x2[200] += 100.0
    a, b = F.window_stats(rough_series, 16), F.window_stats(x2, 16)
    # window j ends at row j + 15: windows ending before row 200 are untouched
    np.testing.assert_array_equal(a[: 200 - 15], b[: 200 - 15])
    assert not np.allclose(a[200 - 15], b[200 - 15])


@pytest.mark.parametrize(
    ("call", "error", "names"),
    [
        (lambda: F.window_stats(np.arange(10.0), 1), InvalidParameterError, "window"),
        (lambda: F.window_stats(np.arange(10.0), 2.5), InvalidParameterError, "window"),
        (lambda: F.window_stats(np.arange(10.0), 11), NotEnoughDataError, "window"),
        (lambda: F.window_view(np.arange(10.0), 0), InvalidParameterError, "window"),
        (lambda: F.rolling_mean_std(np.arange(5.0), 6), NotEnoughDataError, "window"),
        (lambda: F.trend_slope(np.arange(5.0), True), InvalidParameterError, "window"),
        (lambda: F.window_stats(np.array([1.0, np.nan, 2.0]), 2), InvalidInputError, "non-finite"),
        (lambda: F.window_stats(np.ones((4, 2)), 2), InvalidInputError, "1-D"),
        (lambda: F.seasonality_strength(np.arange(30.0), 1), InvalidParameterError, "period"),
        (lambda: F.seasonality_strength(np.arange(30.0), 20), NotEnoughDataError, "period"),
        (lambda: F.time_features(["not a time"]), InvalidInputError, "timestamps"),
        (lambda: F.ratio([1.0, 2.0], [1.0], "r"), InvalidInputError, "same length"),
        (lambda: F.ratio([1.0], [1.0], ""), InvalidParameterError, "name"),
        (lambda: F.derived_ratios([1, 2]), InvalidInputError, "frame"),
        (lambda: F.build_features(pd.DataFrame({"a": np.arange(10.0)}), window=1), InvalidParameterError, "window"),
        (lambda: F.build_features(pd.DataFrame({"a": np.arange(10.0)}), window=20), NotEnoughDataError, "window"),
        (lambda: F.build_features(pd.DataFrame({"a": np.arange(10.0)}), value_columns=["b"]), UnknownNameError, "'b'"),
        (lambda: F.build_features(pd.DataFrame({"a": ["x"] * 10})), InvalidInputError, "numeric"),
        (lambda: F.build_features(pd.DataFrame({"a": [1.0] * 9 + [np.inf]}), window=4), InvalidInputError, "a: "),
    ],
)
def test_bad_arguments_raise_a_named_eyenet_error(call, error, names):
    with pytest.raises(error, match=names) as info:
        call()
    assert isinstance(info.value, EyenetError)
