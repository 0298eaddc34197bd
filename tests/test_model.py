"""The post-processing steps of a model: calibration, running rank, alarms, ensemble combination,
and the isolation forest's vectorized evaluator and pickle-free artifact."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from eyenet.core import detectors
from eyenet.core.alarms import AlarmPolicy, AlarmState
from eyenet.core.calibration import RunningRank, TailCalibrator
from eyenet.core.detectors.ensemble import Ensemble
from eyenet.core.detectors.iforest import IForest
from eyenet.core.errors import InvalidParameterError, NotEnoughDataError
from eyenet.core.model import REACH_FLOOR, AnomalyModel

RNG_SEED = 11


@pytest.fixture(scope="module")
def calibrator() -> TailCalibrator:
    return TailCalibrator().fit(np.random.default_rng(RNG_SEED).standard_normal(2000))


# -- TailCalibrator ----------------------------------------------------------------------------------
def test_calibration_is_monotone_and_within_unit_interval(calibrator: TailCalibrator) -> None:
    raw = np.linspace(-10.0, 40.0, 2001)
    cal = calibrator.transform(raw)
    assert np.isfinite(cal).all()
    assert (cal >= 0).all() and (cal <= 1).all()
    assert (np.diff(cal) >= 0).all()


def test_higher_raw_scores_calibrate_higher(calibrator: TailCalibrator) -> None:
    typical, unusual, extreme = calibrator.transform(np.array([0.0, 3.0, 10.0]))
    assert typical < unusual < extreme
    assert typical < 0.1  # a median score is nothing special


def test_calibration_keeps_nan_as_not_ready(calibrator: TailCalibrator) -> None:
    cal = calibrator.transform(np.array([np.nan, 1.0, np.nan]))
    assert np.isnan(cal[[0, 2]]).all() and np.isfinite(cal[1])


def test_calibrator_needs_ten_finite_scores() -> None:
    with pytest.raises(NotEnoughDataError):
        TailCalibrator().fit(np.concatenate([np.arange(9.0), np.full(50, np.nan)]))
    TailCalibrator().fit(np.concatenate([np.arange(10.0), np.full(5, np.nan)]))  # ten are enough


def test_calibrator_rejects_a_bad_tail_quantile() -> None:
    with pytest.raises(InvalidParameterError, match="tail_quantile"):
        TailCalibrator(tail_quantile=1.5).fit(np.arange(100.0))


def test_calibrator_state_round_trip(calibrator: TailCalibrator) -> None:
    again = TailCalibrator.from_state(calibrator.state())
    raw = np.linspace(-3, 12, 50)
    np.testing.assert_array_equal(again.transform(raw), calibrator.transform(raw))


def test_calibrator_on_constant_scores_is_finite() -> None:
    cal = TailCalibrator().fit(np.full(100, 2.0)).transform(np.array([1.0, 2.0, 3.0]))
    assert np.isfinite(cal).all() and cal[0] <= cal[1] <= cal[2]


# -- RunningRank -------------------------------------------------------------------------------------
def test_rank_is_nan_while_learning() -> None:
    rr = RunningRank(history=200, learning=50, suppress=0)
    ranks, hist = rr.rank(np.random.default_rng(0).uniform(0.1, 0.2, 80), np.empty(0))
    assert np.isnan(ranks[:50]).all() and np.isfinite(ranks[50:]).all()
    assert len(hist) == 80


def test_rank_skips_not_ready_scores() -> None:
    rr = RunningRank(history=100, learning=10, suppress=0)
    scores = np.r_[np.linspace(0, 1, 20), np.nan, 0.5]
    ranks, hist = rr.rank(scores, np.empty(0))
    assert np.isnan(ranks[20]) and np.isfinite(ranks[21])
    assert len(hist) == 21 and np.isfinite(hist).all()


def test_burst_after_quiet_history_ranks_high() -> None:
    rr = RunningRank(history=1000, learning=50, suppress=0)
    rng = np.random.default_rng(1)
    quiet = rng.uniform(0.10, 0.20, 1000)
    ranks, _ = rr.rank(np.r_[rng.uniform(0.11, 0.19, 20), np.full(5, 0.9)], quiet)
    assert ranks[20] > 0.9  # above everything in the history: the top rank
    assert ranks[20] > ranks[:20].max()
    assert np.median(ranks[:20]) < 0.3  # more of the same ranks low


def test_constant_history_gives_finite_ranks() -> None:
    rr = RunningRank(history=500, learning=50, suppress=0)
    ranks, _ = rr.rank(np.array([0.3, 0.3, 0.5, 0.1]), np.full(400, 0.3))
    assert np.isfinite(ranks).all() and (ranks >= 0).all() and (ranks <= 1).all()
    assert ranks[2] > ranks[0]  # above everything seen ranks higher than more of the same


def test_rank_history_is_bounded_and_batch_equals_stream() -> None:
    rr = RunningRank(history=60, learning=10, suppress=0)
    scores = np.random.default_rng(2).gamma(2.0, 0.1, 150)
    batch, hist = rr.rank(scores, np.empty(0))
    assert len(hist) == 60
    h, parts = np.empty(0), []
    for v in scores:
        r, h = rr.rank(np.array([v]), h)
        parts.append(r)
    np.testing.assert_array_equal(np.concatenate(parts), batch)
    np.testing.assert_array_equal(h, hist)


def test_novelty_keeps_only_the_onset_of_an_incident() -> None:
    rr = RunningRank(history=100, learning=10, suppress=3)
    ranks = np.array([0.5, 0.4, 0.6, 0.6, np.nan, 0.1, 0.2, 0.3, 0.9])
    out, recent = rr.novelty(ranks, np.empty(0))
    np.testing.assert_array_equal(out, [0.5, 0.0, 0.6, 0.0, np.nan, 0.0, 0.0, 0.0, 0.9])
    assert len(recent) == 3
    # the same, one point at a time
    q, parts = np.empty(0), []
    for r in ranks:
        o, q = rr.novelty(np.array([r]), q)
        parts.append(o)
    np.testing.assert_array_equal(np.concatenate(parts), out)


@pytest.mark.parametrize("kw", [dict(learning=5), dict(learning=600, history=500), dict(suppress=-1)])
def test_rank_rejects_bad_windows(kw: dict) -> None:
    with pytest.raises(InvalidParameterError):
        RunningRank(**kw).validate()


# -- AlarmPolicy -------------------------------------------------------------------------------------
def test_alarm_at_threshold_and_never_when_not_ready() -> None:
    alarms, _ = AlarmPolicy(threshold=0.5).decide(np.array([0.1, 0.5, 0.7, np.nan, 0.49, 1.0]))
    assert alarms.tolist() == [False, True, True, False, False, True]


def test_alarm_k_of_n_debounce() -> None:
    s = np.array([1, 0, 1, 0, 0, 1, 1, 0, 0, 0], dtype=float)
    alarms, _ = AlarmPolicy(threshold=0.5, k=2, n=3).decide(s)
    assert np.flatnonzero(alarms).tolist() == [2, 6]  # 1,0,1 and 0,1,1; a lone 1 never fires


def test_alarm_suppression_after_an_alarm() -> None:
    alarms, _ = AlarmPolicy(threshold=0.5, suppress=2).decide(np.ones(8))
    assert np.flatnonzero(alarms).tolist() == [0, 3, 6]


def test_alarm_batch_equals_point_by_point() -> None:
    scores = np.random.default_rng(3).uniform(0, 1, 300)
    scores[::17] = np.nan
    policy = AlarmPolicy(threshold=0.6, k=2, n=4, suppress=5)
    batch, end = policy.decide(scores)
    state, parts = AlarmState(), []
    for v in scores:
        a, state = policy.decide(np.array([v]), state)
        state = AlarmState.from_dict(json.loads(json.dumps(state.to_dict())))
        parts.append(a)
    np.testing.assert_array_equal(np.concatenate(parts), batch)
    assert state.to_dict() == end.to_dict()
    assert 0 < batch.sum() < len(scores)


@pytest.mark.parametrize(
    "kw",
    [dict(threshold=0.0), dict(threshold=1.5), dict(k=0), dict(k=3, n=2), dict(suppress=-1)],
    ids=["threshold0", "threshold_gt1", "k0", "k_gt_n", "negative_suppress"],
)
def test_alarm_rejects_bad_params(kw: dict) -> None:
    with pytest.raises(InvalidParameterError):
        AlarmPolicy(**kw).validate()
    model = AnomalyModel(detectors.create("zscore", window=8), alarm=AlarmPolicy(**kw))
    with pytest.raises(InvalidParameterError):
        model.fit(np.sin(np.arange(300) / 5.0))


def test_top_is_the_rank_of_a_score_beyond_everything_remembered() -> None:
    r = RunningRank(history=5000, learning=50)
    history = np.random.default_rng(0).normal(size=225)
    ranks, _ = r.rank(np.array([10.0]), history)
    assert ranks[0] == r.top(225)  # to the last bit
    assert r.top(10**6) == 1.0 and r.top(225) == pytest.approx(np.log10(226) / np.log10(5001))


def test_a_model_with_a_short_reference_lowers_its_threshold_to_what_a_new_maximum_ranks(tmp_path) -> None:
    """Fitted on 600 rows, a model holds out 180: a new series' ranks start from those 180 scores, and
    no point can rank 0.7 until some 390 are remembered, so a spike early in the stream could not
    alarm at 0.7."""
    rng = np.random.default_rng(5)
    x = np.sin(np.arange(1000) / 6.0) + 0.1 * rng.normal(size=1000)
    x[620] += 4.0  # a spike 20 points into a stream that starts after the fit rows
    short = AnomalyModel(detectors.create("zscore", window=8)).fit(x[:600])
    held = len(short.reference_[0])
    assert held > REACH_FLOOR and short.threshold == pytest.approx(short.rank.top(held)) and short.threshold < 0.7
    assert short.alarm.threshold == 0.7  # the configured threshold is unchanged
    out = short.score(x[600:])
    assert out.alarm[20] and out.score[20] >= short.threshold and not out.alarm[:20].any()
    strict = AnomalyModel(detectors.create("zscore", window=8), alarm=AlarmPolicy(reachable=False)).fit(x[:600])
    assert strict.threshold == 0.7 and not strict.score(x[600:]).alarm.any()
    # the stream and the batch agree, and a saved model keeps its threshold
    stream = short.stream()
    assert [stream.score_one(v).alarm for v in x[600:]] == out.alarm.tolist()
    # a shorter reference lowers it no further than REACH_FLOOR scores would
    tiny = AnomalyModel(detectors.create("zscore", window=8)).fit(x[:300])
    assert len(tiny.reference_[0]) < REACH_FLOOR and tiny.threshold == pytest.approx(tiny.rank.top(REACH_FLOOR))
    back = AnomalyModel.load(short.save(tmp_path / "m"))
    assert back.threshold == short.threshold and back.calibration_summary()["threshold"] == short.threshold
    # a reference long enough to reach 0.7: the threshold as configured
    long = AnomalyModel(detectors.create("zscore", window=8)).fit(np.tile(x[:600], 3))
    assert len(long.reference_[0]) > 400 and long.threshold == 0.7
    with pytest.raises(InvalidParameterError, match="reachable"):
        AnomalyModel(detectors.create("zscore"), alarm=AlarmPolicy(reachable="yes")).fit(x[:600])


# -- Ensemble combination -----------------------------------------------------------------------------
MEMBERS = [{"family": "zscore", "params": {}}, {"family": "mad", "params": {}}, {"family": "iqr", "params": {}}]
S = np.array([[0.1, 0.5, 0.9], [0.2, 0.2, 0.2], [0.0, 1.0, 0.6]])


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        (dict(combine="mean"), [0.5, 0.2, 1.6 / 3]),
        (dict(combine="max"), [0.9, 0.2, 1.0]),
        (dict(combine="weighted", weights=[1, 0, 3]), [(0.1 + 2.7) / 4, 0.2, 1.8 / 4]),
        (dict(combine="vote", vote_threshold=0.5), [2 / 3, 0.0, 2 / 3]),
    ],
    ids=["mean", "max", "weighted", "vote"],
)
def test_ensemble_combine_modes(kw: dict, expected: list[float]) -> None:
    ens = detectors.create("ensemble", members=MEMBERS, **kw)
    np.testing.assert_allclose(ens.combine_scores(S), expected, rtol=1e-12)


@pytest.mark.parametrize("weights", [None, [1.0, 2.0], [0, 0, 0]], ids=["none", "wrong_count", "zero_sum"])
def test_weighted_ensemble_needs_matching_weights(weights: list[float] | None) -> None:
    with pytest.raises(InvalidParameterError, match="weights"):
        detectors.create("ensemble", members=MEMBERS, combine="weighted", weights=weights)
    with pytest.raises(InvalidParameterError, match="weights"):
        Ensemble(members=MEMBERS, combine="weighted", weights=weights).fit(np.sin(np.arange(600) / 5.0))


# -- IForest ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def forest() -> IForest:
    rng = np.random.default_rng(RNG_SEED)
    x = np.sin(2 * np.pi * np.arange(800) / 40) + 0.1 * rng.standard_normal(800)
    return IForest(window=16, n_estimators=60, max_samples=128, seed=3).fit(x)


def test_vectorized_forest_equals_scikit_learn(forest: IForest) -> None:
    rng = np.random.default_rng(4)
    d = forest.sklearn_.n_features_in_
    features = np.vstack([rng.normal(0.0, 2.0, (400, d)), rng.uniform(-20, 20, (100, d))])
    np.testing.assert_allclose(forest.forest_.score(features), -forest.sklearn_.score_samples(features), rtol=0, atol=1e-12)
    # and on the detector's own features of a series
    x = np.cos(np.arange(300) / 7.0)
    f = forest._features(x)
    np.testing.assert_allclose(forest.forest_.score(f), -forest.sklearn_.score_samples(f), rtol=0, atol=1e-12)


def test_forest_saves_and_loads_without_pickle(forest: IForest, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = forest.save(tmp_path / "iforest")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "state.npz"]
    with np.load(d / "state.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle must not be used to load a model")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = detectors.load(d)
    assert isinstance(loaded, IForest) and not hasattr(loaded, "sklearn_")
    x = np.sin(np.arange(400) / 6.0)
    np.testing.assert_array_equal(loaded.score(x), forest.score(x))


def test_member_weights_make_mean_a_weighted_mean() -> None:
    members = [{**m, "weight": w} for m, w in zip(MEMBERS, (3.0, 1.0, 0.0))]
    ens = detectors.create("ensemble", members=members)
    np.testing.assert_allclose(ens.combine_scores(S), S @ np.array([0.75, 0.25, 0.0]), rtol=1e-12)
    assert detectors.from_dict(ens.to_dict()).member_weights.tolist() == [3.0, 1.0, 0.0]


@pytest.mark.parametrize("weights", [(-1.0, 1.0, 1.0), (0.0, 0.0, 0.0), ("x", 1.0, 1.0)], ids=["negative", "zero_sum", "not_a_number"])
def test_bad_member_weights_are_rejected(weights: tuple) -> None:
    with pytest.raises(InvalidParameterError, match="members"):
        detectors.create("ensemble", members=[{**m, "weight": w} for m, w in zip(MEMBERS, weights)])


def test_ensemble_model_fits_members_on_the_whole_fit_part() -> None:
    x = np.sin(np.arange(1000) / 5.0) + 0.05 * np.random.default_rng(4).standard_normal(1000)
    model = AnomalyModel(Ensemble(members=[{"family": "zscore", "params": {"window": 16}}]), holdout=0.3).fit(x)
    member = model.detector.members_[0]
    # the model holds out the last 30 %; the member must not hold out part of the rest again
    alone = detectors.create("zscore", window=16).fit(x[:700])
    assert member.detector.spread_floor_ == alone.spread_floor_
    held = alone.score(x[700 - 16 :])[16:]
    np.testing.assert_allclose(np.sort(member.reference), np.sort(held[np.isfinite(held)]))
    np.testing.assert_allclose(model.reference_[0], held[np.isfinite(held)])


@pytest.mark.parametrize("level", [0.3, 0.7, 0.95])
def test_raw_at_inverts_the_calibration(calibrator: TailCalibrator, level: float) -> None:
    raw = calibrator.raw_at(level)
    assert calibrator.transform_one(raw) >= level > calibrator.transform_one(raw - 1e-6 * max(1.0, abs(raw)))


@pytest.mark.parametrize("combine", ["mean", "weighted", "max", "vote"])
def test_member_shares_sum_to_one_and_follow_the_combination(combine: str) -> None:
    ens = Ensemble(members=[{"family": "zscore"}, {"family": "mad"}, {"family": "iqr"}], combine=combine,
                   weights=[2.0, 1.0, 1.0], vote_threshold=0.5)
    s = np.array([[0.9, 0.3, 0.6], [0.2, np.nan, 0.2], [0.0, 0.0, 0.0], [np.nan] * 3])
    sh = ens.shares(s)
    np.testing.assert_allclose(np.nansum(sh[:3], axis=1), 1.0)
    assert np.isnan(sh[1, 1]) and np.isnan(sh[3]).all()  # a member left out shares nothing
    np.testing.assert_allclose(sh[2], [1 / 3] * 3)  # nothing to share: equal parts
    want = {"mean": [0.5, 1 / 6, 1 / 3], "weighted": [0.9 / 1.35, 0.15 / 1.35, 0.3 / 1.35],
            "max": [1.0, 0.0, 0.0], "vote": [0.5, 0.0, 0.5]}[combine]
    np.testing.assert_allclose(sh[0], want)
    np.testing.assert_allclose(sh[1, [0, 2]], [0.5, 0.5])  # the rest's plain mean


@pytest.mark.parametrize("combine", ["mean", "weighted", "max", "vote"])
@pytest.mark.parametrize("members", [
    [{"family": "zscore", "weight": 3.0}, {"family": "mad", "weight": 1.0, "solo": True}],
    [{"family": "zscore"}, {"family": "mad"}, {"family": "iqr", "solo": True}],
    [{"family": "zscore", "weight": 0.0, "solo": True}, {"family": "mad", "weight": 2.0}],
])
def test_one_points_shares_are_those_of_the_same_row_among_many_bit_for_bit(combine: str, members: list) -> None:
    """A one-point request takes the shares' real-time path: the same numbers as the array path."""
    rng = np.random.default_rng(5)
    n = len(members)
    ens = Ensemble(members=members, combine=combine, weights=rng.uniform(0.1, 2.0, n).tolist(), vote_threshold=0.5)
    rows = rng.uniform(0, 1, (400, n))
    rows[::7, 1] = np.nan  # a member left out
    rows[::23] = np.nan  # nothing ready
    rows[5::11] = 0.0  # nothing to share
    rows[3::13] = rows[3::13, :1]  # ties
    rows[9::17, 0] = 0.5  # at the vote threshold
    rows[4::19, 0] = np.inf  # not a score: left out, as NaN
    many = ens.shares(rows)
    one = np.vstack([ens.shares(r[None, :]) for r in rows])
    assert np.array_equal(one, many, equal_nan=True)


def test_the_band_holds_the_stated_share_of_held_out_points_around_the_expected_value() -> None:
    from eyenet.core import synthetic
    from eyenet.core.model import BAND_COVERAGE

    _, v, _ = synthetic.series("cpu_pct", n=1500, seed=3)
    v = np.asarray(v, dtype=float)
    model = AnomalyModel.from_dict({"detector": {"family": "ensemble", "params": {"members": [
        {"family": "zscore", "params": {}}, {"family": "seasonal", "params": {}}]}}}).fit(v[:1000])
    h = model.expected_halfwidth
    assert model.expected_member == 1 and h is not None and 0 < h < np.ptp(v)
    # the held-out points (the last 300 of the fit data): BAND_COVERAGE of them inside expected +- h
    e = model.members[1]._expected(v[:1000])[-300:]
    inside = np.abs(v[700:1000] - e) <= h
    assert len(model.reference_[1]) == 300 and inside.mean() == pytest.approx(BAND_COVERAGE, abs=0.004)
    no_band = AnomalyModel.from_dict({"detector": {"family": "zscore", "params": {}}}).fit(v[:1000])
    assert no_band.expected_halfwidth is None
