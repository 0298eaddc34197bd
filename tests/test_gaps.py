"""Gaps in a stream: repeats dropped, missing values and timestamps imputed and marked, long gaps
restart the warm-up, the learned step; and the stream state that carries it all (no Ray)."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from eyenet.core import presets, synthetic
from eyenet.core.errors import InvalidInputError, InvalidParameterError
from eyenet.core.gaps import MAX_INSERTED, STEP_WEIGHT, Filled, GapPolicy, fill
from eyenet.core.model import AnomalyModel, StreamState

nan = math.nan


def flat(f: Filled) -> tuple[list[float], list[float] | None, list[bool]]:
    """Values, timestamps and imputed flags of all segments, end to end."""
    segs = f.segments
    ts = None if not segs or segs[0].timestamps is None else np.concatenate([s.timestamps for s in segs]).tolist()
    return (np.concatenate([s.values for s in segs]).tolist() if segs else [], ts,
            np.concatenate([s.imputed for s in segs]).tolist() if segs else [])


# -- the policy ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(max_fill=-1), dict(max_fill=1.5), dict(tolerance=0.0), dict(tolerance=-0.5),
                                dict(tolerance=nan), dict(tolerance=math.inf)],
                         ids=["negative_fill", "fractional_fill", "zero_tol", "negative_tol", "nan_tol", "inf_tol"])
def test_policy_rejects_bad_values(kw: dict) -> None:
    with pytest.raises(InvalidParameterError, match="gap"):
        GapPolicy(**kw).validate()
    with pytest.raises(InvalidParameterError):
        fill([1.0], policy=GapPolicy(**kw))


def test_policy_defaults_are_valid() -> None:
    GapPolicy().validate()
    GapPolicy(max_fill=0, tolerance=0.1).validate()


# -- the common case -----------------------------------------------------------------------------------
def test_a_gap_free_request_is_one_segment_of_the_same_arrays() -> None:
    v, t = np.array([1.0, 2.0, 3.0]), np.array([130.0, 140.0, 150.0])
    f = fill(v, t, last_ts=120.0, step=10.0, last_value=0.5)
    (seg,) = f.segments
    assert seg.values is v and seg.timestamps is t and seg.imputed.tolist() == [False] * 3 and not seg.restart
    assert (f.dropped, f.last_ts, f.step, f.last_value) == (0, 150.0, 10.0, 3.0)


def test_without_timestamps_only_values_matter_and_last_ts_is_forgotten() -> None:
    v = np.array([5.0, 6.0])
    f = fill(v, last_ts=100.0, step=10.0, last_value=4.0)
    (seg,) = f.segments
    assert seg.values is v and seg.timestamps is None and not seg.imputed.any()
    assert math.isnan(f.last_ts) and (f.step, f.last_value, f.dropped) == (10.0, 6.0, 0)


def test_an_empty_request_changes_nothing() -> None:
    f = fill([], [], last_ts=10.0, step=5.0, last_value=1.0)
    assert (f.segments, f.dropped, f.last_ts, f.step, f.last_value) == ([], 0, 10.0, 5.0, 1.0)


# -- rule 1: repeats -------------------------------------------------------------------------------------
def test_points_at_or_before_the_last_applied_timestamp_are_dropped_and_counted() -> None:
    f = fill([9.0, 1.0, 2.0, 8.0, 7.0, 3.0], [90.0, 100.0, 110.0, 105.0, 110.0, 120.0],
             last_ts=100.0, step=10.0, last_value=0.0)
    assert flat(f) == ([2.0, 3.0], [110.0, 120.0], [False, False])
    assert (f.dropped, f.last_ts, f.last_value) == (4, 120.0, 3.0)


def test_a_retried_request_is_dropped_whole_and_leaves_the_state() -> None:
    v, t = [1.0, 2.0, 3.0], [10.0, 20.0, 30.0]
    first = fill(v, t)
    again = fill(v, t, last_ts=first.last_ts, step=first.step, last_value=first.last_value)
    assert again.segments == [] and again.dropped == 3
    assert (again.last_ts, again.step, again.last_value) == (first.last_ts, first.step, first.last_value)


# -- rule 4: missing values -----------------------------------------------------------------------------------
def test_missing_values_carry_the_value_before_them_forward() -> None:
    f = fill([nan, 2.0, nan, nan, 5.0], [10.0, 20.0, 30.0, 40.0, 50.0], last_ts=0.0, step=10.0, last_value=7.0)
    assert flat(f) == ([7.0, 2.0, 2.0, 2.0, 5.0], [10.0, 20.0, 30.0, 40.0, 50.0], [True, False, True, True, False])
    assert f.dropped == 0 and f.last_value == 5.0


def test_missing_values_are_imputed_without_timestamps_too() -> None:
    assert flat(fill([nan, 2.0, nan], last_value=7.0)) == ([7.0, 2.0, 2.0], None, [True, False, True])
    assert fill([1.0, nan]).last_value == 1.0


def test_a_new_series_cannot_impute_its_leading_missing_values_and_drops_them() -> None:
    f = fill([nan, nan, 5.0, nan])
    assert flat(f) == ([5.0, 5.0], None, [False, True]) and f.dropped == 2
    nothing = fill([nan, nan], [10.0, 20.0])
    assert nothing.segments == [] and nothing.dropped == 2
    assert math.isnan(nothing.last_ts) and math.isnan(nothing.last_value)  # no point was applied
    assert nothing.step == 10.0  # the timestamps still tell the step


def test_values_may_come_as_a_list_with_none() -> None:
    assert flat(fill([1.0, None, 3.0])) == ([1.0, 1.0, 3.0], None, [False, True, False])


# -- rule 3: missing timestamps -------------------------------------------------------------------------------
def test_a_gap_is_filled_on_the_line_between_the_points_around_it() -> None:
    f = fill([4.0], [50.0], last_ts=20.0, step=10.0, last_value=1.0)
    assert flat(f) == ([2.0, 3.0, 4.0], [30.0, 40.0, 50.0], [True, True, False])
    assert (f.dropped, f.last_ts, f.last_value) == (0, 50.0, 4.0)


def test_a_gap_inside_a_request_and_a_missing_value_after_it() -> None:
    f = fill([1.0, 2.0, 3.0, nan, 4.0], [0.0, 10.0, 20.0, 50.0, 60.0])
    assert flat(f) == ([1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 4.0], [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0],
                       [False, False, False, True, True, True, False])
    assert len(f.segments) == 1 and f.step == 10.0


def test_inserted_points_divide_the_gap_evenly_when_the_timestamps_jitter() -> None:
    f = fill([0.0, 3.0], [100.0, 131.5], last_ts=89.0, step=10.0, last_value=0.0)
    _, ts, imputed = flat(f)
    assert ts == pytest.approx([100.0, 110.5, 121.0, 131.5]) and imputed == [False, True, True, False]


def test_the_tolerance_decides_what_is_a_gap() -> None:
    def inserted(dt: float, tolerance: float) -> int:
        return len(flat(fill([1.0], [100.0 + dt], last_ts=100.0, step=10.0, last_value=0.0,
                             policy=GapPolicy(tolerance=tolerance)))[0]) - 1

    assert [inserted(dt, 0.5) for dt in (14.0, 15.0, 16.0, 24.9, 25.1)] == [0, 0, 1, 1, 2]
    assert inserted(13.0, 0.2) == 0  # over 1.2 steps, but the nearest whole number of steps is one


def test_a_gap_of_max_fill_points_is_filled_and_a_longer_one_restarts_the_warm_up() -> None:
    policy = GapPolicy(max_fill=3)
    filled = fill([5.0], [50.0], last_ts=10.0, step=10.0, last_value=1.0, policy=policy)
    assert flat(filled)[0] == [2.0, 3.0, 4.0, 5.0] and not filled.segments[0].restart
    cut = fill([6.0], [60.0], last_ts=10.0, step=10.0, last_value=1.0, policy=policy)
    assert flat(cut) == ([6.0], [60.0], [False]) and cut.segments[0].restart


def test_a_long_gap_inside_a_request_splits_it() -> None:
    f = fill([1.0, 2.0, 3.0, 9.0, 8.0], [0.0, 10.0, 20.0, 2000.0, 2010.0], policy=GapPolicy(max_fill=5))
    a, b = f.segments
    assert (a.values.tolist(), a.restart, b.values.tolist(), b.timestamps.tolist(), b.restart) == \
        ([1.0, 2.0, 3.0], False, [9.0, 8.0], [2000.0, 2010.0], True)
    assert (f.last_ts, f.last_value, f.dropped) == (2010.0, 8.0, 0)


def test_nothing_is_carried_across_a_long_gap() -> None:
    f = fill([nan, 9.0], [2000.0, 2010.0], last_ts=20.0, step=10.0, last_value=3.0, policy=GapPolicy(max_fill=5))
    (seg,) = f.segments
    assert (seg.values.tolist(), seg.timestamps.tolist(), seg.restart, f.dropped) == ([9.0], [2010.0], True, 1)
    lost = fill([nan], [2000.0], last_ts=20.0, step=10.0, last_value=3.0, policy=GapPolicy(max_fill=5))
    assert lost.segments == [] and lost.dropped == 1 and (lost.last_ts, lost.last_value) == (20.0, 3.0)


def test_max_fill_zero_restarts_at_every_gap() -> None:
    f = fill([1.0, 2.0, 3.0], [0.0, 10.0, 30.0], last_ts=-10.0, step=10.0, last_value=0.0,
             policy=GapPolicy(max_fill=0))
    assert [(s.values.tolist(), s.restart) for s in f.segments] == [([1.0, 2.0], False), ([3.0], True)]


def test_one_request_cannot_insert_without_bound() -> None:
    t = np.arange(2000) * 610.0  # each point 60 steps after the one before: 60 inserted per point
    with pytest.raises(InvalidInputError, match=str(MAX_INSERTED)):
        fill(np.ones(2000), t, last_ts=-610.0, step=10.0, last_value=1.0)
    huge = GapPolicy(max_fill=10**13)
    with pytest.raises(InvalidInputError, match="insert"):
        fill([1.0], [1e12], last_ts=0.0, step=1.0, last_value=0.0, policy=huge)


@pytest.mark.parametrize("values, timestamps, match", [
    ([1.0, math.inf], None, r"values\[1\]"), ([-math.inf], [1.0], r"values\[0\]"),
    ([1.0, 2.0], [1.0, nan], r"timestamps\[1\]"), ([1.0, 2.0], [1.0], "timestamps"), ([[1.0], [2.0]], None, "shape")])
def test_input_the_caller_should_have_refused_is_an_error(values, timestamps, match) -> None:
    with pytest.raises(InvalidInputError, match=match):
        fill(values, timestamps)


# -- rule 2: the step ------------------------------------------------------------------------------------
def test_the_first_intervals_set_the_step_to_their_median() -> None:
    f = fill([1.0, 2.0, 3.0, 6.0, 7.0], [0.0, 10.0, 20.0, 50.0, 60.0])
    assert f.step == 10.0 and flat(f)[0] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]


def test_one_point_leaves_the_step_unknown_until_the_next() -> None:
    first = fill([1.0], [100.0])
    assert math.isnan(first.step) and flat(first) == ([1.0], [100.0], [False])
    second = fill([2.0], [115.0], last_ts=first.last_ts, step=first.step, last_value=first.last_value)
    assert second.step == 15.0


def test_one_odd_interval_moves_the_step_a_little_and_regular_ones_keep_it() -> None:
    def after(dt: float) -> float:
        return fill([1.0], [100.0 + dt], last_ts=100.0, step=10.0, last_value=0.0).step

    assert after(10.0) == 10.0 and after(11.0) == pytest.approx(10.1)
    assert after(10_000.0) == pytest.approx(10.0 * (1 + STEP_WEIGHT * 0.5))  # a gap, however long
    assert after(0.001) == pytest.approx(10.0 + STEP_WEIGHT * (10.0 / 1.5 - 10.0))  # a burst
    many = fill(np.ones(50), 100.0 + 10.0 * np.arange(1, 51), last_ts=100.0, step=10.0, last_value=1.0)
    assert many.step == 10.0


def _one_by_one(t: np.ndarray, step: float) -> tuple[float, int]:
    """The step after feeding points at ``t`` one at a time, and how many points the last ten inserted."""
    last_ts, last_value, inserted = t[0], 0.0, []
    for x in t[1:]:
        f = fill([0.0], [x], last_ts=last_ts, step=step, last_value=last_value)
        last_ts, step, last_value = f.last_ts, f.step, f.last_value
        inserted.append(len(flat(f)[0]) - 1)
    return step, sum(inserted[-10:])


def test_a_wrong_step_corrects_itself() -> None:
    step, inserted = _one_by_one(15.0 * np.arange(120), step=1.0)  # would insert 14 points per point
    assert step == pytest.approx(15.0, rel=0.05) and inserted == 0


def test_a_longer_scrape_interval_is_learned() -> None:
    t = np.concatenate((15.0 * np.arange(20), 285.0 + 60.0 * np.arange(1, 61)))  # 15 s, then 60 s
    step, inserted = _one_by_one(t, step=15.0)
    assert step == pytest.approx(60.0, rel=0.05) and inserted == 0


def test_a_state_step_that_is_not_a_positive_number_is_learned_again() -> None:
    for bad in (0.0, -5.0, math.inf, nan):
        assert fill([1.0, 2.0], [20.0, 30.0], last_ts=10.0, step=bad, last_value=0.0).step == 10.0


# -- properties --------------------------------------------------------------------------------------------
def _messy(rng: np.random.Generator, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """A 15 s series with jitter, missing values, short and long gaps, repeats and late points."""
    t = 15.0 * np.arange(n) + rng.uniform(-2.0, 2.0, n)
    v = np.sin(np.arange(n) / 20.0) + rng.normal(0, 0.1, n)
    v[rng.random(n) < 0.05] = nan
    keep = np.ones(n, dtype=bool)
    for start in rng.choice(n - 100, 40, replace=False):
        keep[start : start + rng.choice([1, 2, 3, 10, 59, 70, 90])] = False
    t, v = t[keep], v[keep]
    late = rng.choice(len(t) - 1, 60, replace=False) + 1  # a point sent again, or a stale one, after its time
    back = np.maximum(late - rng.integers(0, 5, len(late)), 0)
    order = np.argsort(np.concatenate((np.arange(len(t)), late + 0.5)), kind="stable")
    return np.concatenate((v, v[back]))[order], np.concatenate((t, t[back] - rng.choice([0.0, 3.3], len(back))))[order]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_properties_of_a_messy_stream_fed_in_random_chunks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values, stamps = _messy(rng)
    policy = GapPolicy(max_fill=60)
    st = dict(last_ts=nan, step=nan, last_value=nan)
    out_v, out_t, out_imp, starts, restarts, dropped, i = [], [], [], [], [], 0, 0
    while i < len(values):
        n = 50 if i == 0 else int(rng.integers(1, 40))  # the first call shows the step
        f = fill(values[i : i + n], stamps[i : i + n], **st, policy=policy)
        for s in f.segments:
            assert len(s.values) == len(s.timestamps) == len(s.imputed) > 0
            starts.append(sum(map(len, out_v)))
            restarts.append(s.restart)
            out_v.append(s.values), out_t.append(s.timestamps), out_imp.append(s.imputed)
        dropped += f.dropped
        st = dict(last_ts=f.last_ts, step=f.step, last_value=f.last_value)
        i += n
    v, t, imp = np.concatenate(out_v), np.concatenate(out_t), np.concatenate(out_imp)
    assert np.isfinite(v).all() and (np.diff(t) > 0).all()
    real = np.isin(t, stamps)  # an inserted timestamp is never one that was sent (they jitter)
    assert dropped + real.sum() == len(values)
    sent = dict(zip(stamps.tolist(), values.tolist()))  # the first time each timestamp came
    for ts_, x, im in zip(t[real], v[real], imp[real]):
        assert im == math.isnan(sent[ts_]) and (im or x == sent[ts_])
    assert imp[~real].all()
    # every filled gap: at most max_fill points, evenly spaced about one step apart, on a straight line
    edges = np.flatnonzero(np.diff(real.astype(int)))
    for a, b in zip(edges[::2] + 1, edges[1::2] + 1):  # inserted points a .. b-1, real points a-1 and b
        assert b - a <= policy.max_fill
        np.testing.assert_allclose(np.diff(t[a - 1 : b + 1]), (t[b] - t[a - 1]) / (b - a + 1))
        assert 15.0 / 1.6 < (t[b] - t[a - 1]) / (b - a + 1) < 15.0 * 1.6
        np.testing.assert_allclose(np.diff(v[a - 1 : b + 1]), (v[b] - v[a - 1]) / (b - a + 1), atol=1e-12)
    # no gap is left but before a restart, and a restart only after a gap too long to fill
    after_restart = np.zeros(len(t), dtype=bool)
    after_restart[np.array(starts)[np.array(restarts)]] = True
    assert not restarts[0] and sum(restarts) >= 5
    assert (np.diff(t)[~after_restart[1:]] < 1.6 * 15.0).all()
    assert (np.diff(t)[after_restart[1:]] > 55 * 15.0).all()


def test_a_stream_fed_point_by_point_fills_like_one_request() -> None:
    t = np.delete(10.0 * np.arange(60), [12, 13, 30, 40, 41, 42])
    v = np.cos(t / 50.0)
    v[[5, 20, 21]] = nan
    head = fill(v[:10], t[:10])
    whole = fill(v[10:], t[10:], last_ts=head.last_ts, step=head.step, last_value=head.last_value)
    st, parts = head, []
    for x, ts in zip(v[10:], t[10:]):
        st = fill([x], [ts], last_ts=st.last_ts, step=st.step, last_value=st.last_value)
        parts.append(flat(st))
    assert flat(whole) == tuple(sum((p[i] for p in parts), []) for i in range(3))


# -- the state that carries it ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model() -> AnomalyModel:
    _, x, _ = synthetic.series("cpu_pct", n=1200, seed=3, anomalies_per_metric=0)
    return AnomalyModel.from_dict(presets.model_config("zscore")).fit(np.asarray(x[:1000]))


def _gapped(state: StreamState) -> StreamState:
    return replace(state, last_ts=1_700_000_015.0, step=15.0, last_value=42.5)


def test_the_gap_fields_survive_bytes_and_json(model: AnomalyModel) -> None:
    _, st = model.score_stream(np.linspace(40, 45, 30))
    st = _gapped(st)
    for back in (StreamState.from_bytes(st.to_bytes()),
                 StreamState.from_dict(json.loads(json.dumps(st.to_dict(), allow_nan=False)))):
        assert (back.last_ts, back.step, back.last_value, back.seen) == (1_700_000_015.0, 15.0, 42.5, 30)
        np.testing.assert_array_equal(back.values, st.values)
    fresh = model.new_state()
    assert json.loads(json.dumps(fresh.to_dict(), allow_nan=False))["step"] is None  # NaN is null
    for back in (StreamState.from_bytes(fresh.to_bytes()), StreamState.from_dict(fresh.to_dict())):
        assert all(math.isnan(x) for x in (back.last_ts, back.step, back.last_value))


def test_a_state_written_before_the_gap_fields_still_loads(model: AnomalyModel) -> None:
    _, st = model.score_stream(np.linspace(40, 45, 30))
    d = st.to_dict()
    for key in ("last_ts", "step", "last_value"):
        del d[key]
    old = StreamState.from_dict(d)
    head = json.dumps({"lengths": [len(st.values), len(st.scores[0]), len(st.ranks)], "alarm": st.alarm.to_dict(),
                       "seen": st.seen, "model": st.model}).encode()
    body = np.concatenate([st.values, st.scores[0], st.ranks]).astype("<f8").tobytes()
    old_bytes = StreamState.from_bytes(len(head).to_bytes(4, "little") + head + body)
    for back in (old, old_bytes):
        assert back.seen == 30 and all(math.isnan(x) for x in (back.last_ts, back.step, back.last_value))
        np.testing.assert_array_equal(back.values, st.values)


def test_scoring_and_adopting_carry_the_gap_fields(model: AnomalyModel) -> None:
    _, st = model.score_stream(np.linspace(40, 45, 30))
    st = _gapped(st)
    _, after = model.score_stream([46.0, 47.0], st)
    assert (after.last_ts, after.step, after.last_value, after.seen) == (1_700_000_015.0, 15.0, 42.5, 32)
    st.model = "m/1"
    other = model.adopt(st, "m/2")
    assert other.model == "m/2" and all(len(h) == 0 for h in other.scores)
    assert (other.last_ts, other.step, other.last_value) == (1_700_000_015.0, 15.0, 42.5)
    assert model.adopt(_gapped(model.new_state()), "m/3").step == 15.0
