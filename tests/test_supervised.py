"""The supervised member: a classifier learned from labels, solo members in an ensemble, labels from
operators' feedback and from data files, and the gate judging an ensemble with the member against one
without it on labelled synthetic telemetry."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eyenet.core import detectors, presets, synthetic
from eyenet.core.detectors.classifier import FEATURE_NAMES, Classifier
from eyenet.core.errors import InvalidInputError, InvalidParameterError, NotEnoughDataError
from eyenet.core.model import AnomalyModel
from eyenet.lifecycle import supervised
from eyenet.monitoring import feedback

ROWS = 4032


@pytest.fixture(scope="module")
def telemetry():
    """Two weeks at five minutes with spikes and dips throughout: what operators would have labelled."""
    return synthetic.generate(n=ROWS, seed=11, anomalies_per_metric=6, kinds=("spike", "dip"), anomaly_free_prefix=0.05)


def _labelled(t, metric: str) -> tuple[np.ndarray, np.ndarray]:
    x = t.frame[metric].to_numpy()
    y = np.zeros(len(x))
    for a in t.anomalies[metric]:
        y[a.start : a.end + 1] = 1
    return x, y


def test_classifier_matches_scikit_learn_and_saves_without_pickle(telemetry, tmp_path):
    x, y = _labelled(telemetry, "packets_out")
    c = Classifier(n_estimators=40).fit(x[:3000], labels=y[:3000])
    X = c._features(x)
    assert X.shape == (len(x) - c.window + 1, len(FEATURE_NAMES)) and np.isfinite(X).all()
    np.testing.assert_allclose(c.decision(X), c.sklearn_.decision_function(X), rtol=1e-12, atol=1e-12)
    back = detectors.load(c.save(tmp_path / "clf"))
    np.testing.assert_array_equal(back.score(x), c.score(x))
    with np.load(tmp_path / "clf" / "state.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    # causal: the score of a point does not move when later points change
    later = x.copy()
    later[3500:] += 1000.0
    np.testing.assert_array_equal(c.score(later)[:3500], c.score(x)[:3500])


def test_classifier_says_what_it_needs(telemetry):
    x, y = _labelled(telemetry, "packets_out")
    with pytest.raises(NotEnoughDataError, match="learns from labels"):
        Classifier().fit(x)
    with pytest.raises(NotEnoughDataError, match="at least 3 labelled anomalous points"):
        Classifier().fit(x, labels=np.zeros(len(x)))
    bad = y.copy()
    bad[7] = 2
    with pytest.raises(InvalidInputError, match="label 2.0 at row 7"):
        Classifier().fit(x, labels=bad)
    with pytest.raises(InvalidInputError, match="10 labels for"):
        Classifier().fit(x, labels=y[:10])
    with pytest.raises(InvalidParameterError, match="short=64 must be below window=64"):
        Classifier(short=64).fit(x, labels=y)
    # a model whose ensemble holds a classifier refuses to fit without labels
    config = supervised.with_classifier(presets.model_config("zscore"))
    with pytest.raises(NotEnoughDataError, match="labels"):
        AnomalyModel.from_dict(config).fit(x[:2000])


def test_a_solo_member_alarms_on_its_own_and_the_real_time_path_agrees():
    ens = detectors.create("ensemble", members=[{"family": "zscore", "weight": 3.0},
                                                {"family": "mad", "weight": 1.0, "solo": True}])
    rows = np.array([[0.2, 0.9], [0.8, 0.1], [0.5, 0.5]])
    out = ens.combine_scores(rows)
    np.testing.assert_allclose(out, [0.9, 0.8 * 0.75 + 0.1 * 0.25, 0.5])
    assert [ens.combine_row(r.tolist()) for r in rows] == out.tolist()  # bit for bit
    shares = ens.shares(rows)
    np.testing.assert_allclose(shares[0], [0.0, 1.0])  # the solo member's score is the score
    np.testing.assert_allclose(shares[1], [0.6 / 0.625, 0.025 / 0.625])  # the weighted mean won
    with pytest.raises(InvalidParameterError, match="solo"):
        detectors.create("ensemble", members=[{"family": "zscore", "solo": "yes"}])


@pytest.mark.torch
def test_a_member_is_solo_where_it_predicts_the_series_closely(tmp_path):
    """``solo_below``: the forecaster alarms on its own on a series it predicts to within that share of
    the series' spread (its misses there are news), and is averaged with the others on a noisy one."""
    lstm = {"window": 16, "hidden": 16, "max_epochs": 30, "patience": 3}
    members = [{"family": "zscore", "weight": 3.0},
               {"family": "lstm", "params": lstm, "weight": 1.0, "solo_below": 0.15}]
    rng = np.random.default_rng(0)
    t = np.arange(1200)
    smooth = 10 + np.sin(2 * np.pi * t / 40) + 0.01 * rng.standard_normal(len(t))
    noisy = 10 + rng.standard_normal(len(t))
    assert detectors.create("ensemble", members=members).solo == []  # not fitted: nothing known yet
    close = detectors.create("ensemble", members=members).fit(smooth)
    loose = detectors.create("ensemble", members=members).fit(noisy)
    assert close.members_[1].detector.validation_error < 0.15 < loose.members_[1].detector.validation_error
    assert close.members_[0].detector.validation_error is None  # zscore predicts no values
    assert close.solo == [1] and loose.solo == []
    rows = np.array([[0.2, 0.9], [0.8, 0.1]])
    np.testing.assert_allclose(close.combine_scores(rows), [0.9, 0.625])
    np.testing.assert_allclose(loose.combine_scores(rows), [0.375, 0.625])
    for ens in (close, loose):
        assert [ens.combine_row(r.tolist()) for r in rows] == ens.combine_scores(rows).tolist()  # bit for bit
    assert detectors.load(close.save(tmp_path / "close")).solo == [1]  # the error is in the saved state
    # a spike on the smooth series: the forecaster's confident miss is the ensemble's score
    spiked = smooth.copy()
    spiked[1100] += 0.5
    s = close.score(spiked)
    assert s[1100] == pytest.approx(close.calibrate_members(close.member_raw(spiked))[1100, 1]) and s[1100] > 0.9
    for bad in (0, -0.1, "0.1", True, float("inf")):
        with pytest.raises(InvalidParameterError, match="solo_below"):
            detectors.create("ensemble", members=[{"family": "lstm", "solo_below": bad}])


def test_labelled_anomalies_stay_out_of_the_calibration(telemetry):
    x, y = _labelled(telemetry, "packets_out")
    a = next(a for a in telemetry.anomalies["packets_out"] if a.start >= 1000)
    n = a.end + 200  # the training rows end so that the held-out 30 % holds that anomaly
    config = presets.model_config("ensemble", {"members": [{"family": "seasonal"}]})
    blind = AnomalyModel.from_dict(config).fit(x[:n])
    told = AnomalyModel.from_dict(config).fit(x[:n], labels=y[:n])
    held = y[n - int(round(n * 0.3)) : n]
    assert held.sum() > 0, "the held-out part holds a labelled anomaly"
    assert len(told.reference_[0]) == len(blind.reference_[0]) - int(held.sum())
    np.testing.assert_array_equal(told.reference_[0], blind.reference_[0][held == 0])


def test_labels_from_feedback_match_timestamps_and_keep_the_latest(tmp_path):
    ts = pd.date_range("2026-01-05", periods=10, freq="5min", tz="UTC")
    path = tmp_path / "feedback.jsonl"
    records = [
        feedback.Feedback(model="m", series="web", label="true_anomaly", points=2,
                          timestamps=[ts[2].isoformat(), ts[3].isoformat()]),
        feedback.Feedback(model="m", series="web", label="false_alarm", points=1, timestamps=[ts[3].isoformat()]),
        feedback.Feedback(model="m", series="web", label="missed_anomaly", points=1,
                          timestamps=[ts[7].isoformat(), "2027-01-01T00:00:00Z"]),
        feedback.Feedback(model="m", series="db", label="true_anomaly", points=1, timestamps=[ts[5].isoformat()]),
        feedback.Feedback(model="m", series="web", label="true_anomaly", points=1, indices=[4]),
    ]
    path.write_text("".join(__import__("json").dumps(r.to_dict()) + "\n" for r in records) + '{"torn": ')
    got = supervised.labels_from_feedback(feedback.read(path), ts, series="web")
    assert got.labels.tolist() == [0, 0, 1, 0, 0, 0, 0, 1, 0, 0]  # row 3: its false_alarm came later
    assert (got.matched, got.unmatched, got.anomalies) == (4, 1, 2)
    # data sampled 20 s after the stream's points (a Prometheus range): each label goes to the nearest row
    shifted = supervised.labels_from_feedback(feedback.read(path), ts + pd.Timedelta("20s"), series="web")
    assert shifted.labels.tolist() == got.labels.tolist() and shifted.matched == 4
    # a series that ends before the labelled times: nothing within half a step, nothing matched
    far = supervised.labels_from_feedback(feedback.read(path), ts - pd.Timedelta("1h"), series="web")
    assert far.matched == 0 and far.unmatched == 5 and far.anomalies == 0
    unknown = supervised.labels_from_feedback(feedback.read(path), ts, series="web", unlabelled="unknown")
    assert np.isnan(unknown.labels[0]) and unknown.labels[3] == 0
    assert supervised.windows_of(np.array([0, 1, 1, 0, 1, 0, 1])) == [(1, 2), (4, 4), (6, 6)]


def test_labels_from_a_column_name_the_bad_row():
    ts = pd.date_range("2026-01-05", periods=4, freq="1min")
    y = supervised.labels_from_column(ts, ["1", "", "false", "0"], ts[::-1], "f.csv: column 'label'")
    assert np.isnan(y[2]) and y[[0, 1, 3]].tolist() == [0, 0, 1]  # matched by timestamp, not by position
    with pytest.raises(InvalidInputError, match=r"label 'maybe' in row 2 is not 1"):
        supervised.labels_from_column(ts, ["1", "maybe", "0", "0"], ts, "f.csv: column 'label'")
    with pytest.raises(InvalidInputError, match="timestamps repeat"):
        supervised.labels_from_column(ts[[0, 0, 1, 2]], ["1", "0", "0", "0"], ts, "f.csv: column 'label'")


def test_with_classifier_adds_a_solo_member():
    ens = supervised.with_classifier(presets.model_config("ensemble"))
    members = ens["detector"]["params"]["members"]
    assert [m["family"] for m in members] == ["seasonal", "lstm", "classifier"] and members[-1]["solo"]
    single = supervised.with_classifier(presets.model_config("mad"))
    assert [m["family"] for m in single["detector"]["params"]["members"]] == ["mad", "classifier"]
    with pytest.raises(InvalidParameterError, match="already has a classifier"):
        supervised.with_classifier(ens)
    with pytest.raises(NotEnoughDataError, match="both in the first"):
        supervised.split_row(1000, np.r_[np.zeros(900), np.ones(100)])


def test_the_gate_keeps_the_classifier_when_it_finds_what_operators_labelled(telemetry):
    """Spikes and dips labelled in the first 70 % of a series: an ensemble that misses some of them (the
    default members averaged, no member alarming on its own) with the classifier member is judged on the
    last 30 % against the one without, and is better there."""
    x, y = _labelled(telemetry, "packets_out")
    averaged = presets.model_config("ensemble", {"members": [{"family": "seasonal", "weight": 3.0},
                                                             {"family": "lstm", "weight": 1.0}]})
    c = supervised.compare(averaged, x, y, name="packets_out")
    assert c.decision.passed, c.decision.reason
    assert c.chosen is c.with_ and "classifier" in c.with_.member_families
    assert c.with_report.nab_standard > c.without_report.nab_standard + 1
    assert c.with_report.recall > c.without_report.recall
    metrics, tags = supervised.outcome(c)
    assert tags["eyenet.supervised"] == "kept" and "champion.nab_standard" in metrics


def test_the_gate_leaves_the_classifier_out_when_it_does_not_help(telemetry):
    x, y = _labelled(telemetry, "cpu_pct")
    c = supervised.compare(presets.model_config("ensemble"), x, y, name="cpu_pct")
    assert not c.decision.passed and c.chosen is c.without
    assert "classifier" not in c.without.member_families
    assert supervised.outcome(c)[1]["eyenet.supervised"] == "left out"
