"""The deployment gate and the held-out data it scores on (no MLflow, no Ray)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eyenet.lifecycle import gate, holdout, training
from eyenet.core import presets, synthetic
from eyenet.cli.training import DEFAULT_TRAIN_METRIC, default_series
from eyenet.core.data import Series
from eyenet.core.errors import InvalidParameterError, LifecycleError
from eyenet.lifecycle.gate import GatePolicy, GateReport


@pytest.fixture(scope="module")
def synthetic_record() -> dict:
    """What a version trained by plain `eyenet train` records about its data."""
    return training.data_info(default_series(), holdout.synthetic_source(DEFAULT_TRAIN_METRIC))


@pytest.fixture(scope="module")
def validation(synthetic_record):
    return holdout.from_record(synthetic_record)


def _fit(params: dict | None = None, family: str = "zscore"):
    s = default_series()
    return training.fit_model(presets.model_config(family, params), s.values)[0]


@pytest.fixture(scope="module")
def good():
    return _fit()


@pytest.fixture(scope="module")
def poor():
    return _fit({"window": 3})  # far too short a reference window: noisy, misses slow anomalies


# -- held-out data -------------------------------------------------------------------------------
def test_default_training_data_holds_out_the_rest_of_its_synthetic_series(synthetic_record, validation):
    (vs,) = validation
    assert vs.train_rows == synthetic_record["rows"] == int(presets.UP_ROWS * presets.UP_TRAIN_FRACTION)
    assert len(vs.values) == presets.UP_ROWS
    np.testing.assert_array_equal(vs.values[: vs.train_rows], default_series().values)
    _, _, labels = synthetic.series(DEFAULT_TRAIN_METRIC, n=presets.UP_ROWS, seed=presets.UP_SEED)
    assert not labels[: vs.train_rows].any()  # nothing labelled inside the training rows
    for row in np.flatnonzero(labels):  # every labelled row lies in a window
        assert any(a <= row <= b for a, b in vs.windows)


def test_a_record_that_no_longer_matches_its_data_is_an_error(synthetic_record):
    changed = {**synthetic_record, "mean": synthetic_record["mean"] + 1.0}
    with pytest.raises(LifecycleError, match="not the training rows any more"):
        holdout.from_record(changed)
    with pytest.raises(LifecycleError, match="unknown training-data source 'carrier-pigeon'"):
        holdout.from_record({**synthetic_record, "source": {"kind": "carrier-pigeon"}})


def _csv(path: Path, values: np.ndarray) -> Path:
    ts = pd.date_range("2026-01-01", periods=len(values), freq="5min")
    pd.DataFrame({"timestamp": ts, "value": values}).to_csv(path, index=False)
    return path


def test_an_input_file_holds_out_rows_added_after_training_with_planted_anomalies(tmp_path):
    x = 10 + np.sin(np.arange(1000) / 20) + np.random.default_rng(0).normal(0, 0.1, 1000)
    path = _csv(tmp_path / "web.csv", x)
    trained = Series("web", pd.date_range("2026-01-01", periods=600, freq="5min").to_numpy(), x[:600])
    (vs,) = holdout.from_record(training.data_info(trained, holdout.input_source(path)))
    assert vs.train_rows == 600 and len(vs.windows) == 4
    assert all(a >= 600 - 60 for a, _ in vs.windows)  # planted after the training rows
    np.testing.assert_array_equal(vs.values[:600], x[:600])
    # trained on the whole file: the second half gets the planted anomalies
    whole = Series("web", pd.date_range("2026-01-01", periods=1000, freq="5min").to_numpy(), x)
    (vs,) = holdout.from_record(training.data_info(whole, holdout.input_source(path)))
    assert vs.train_rows == 500 and len(vs.windows) == 4


def test_a_corpus_file_is_scored_after_probation_against_its_labels(tmp_path):
    ts = pd.date_range("2026-01-01", periods=1000, freq="5min")
    x = 10 + np.random.default_rng(1).normal(0, 1, 1000)
    (tmp_path / "data" / "cat").mkdir(parents=True)
    pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"), "value": x}).to_csv(tmp_path / "data" / "cat" / "f.csv", index=False)
    (tmp_path / "labels").mkdir()
    window = [f"{ts[700]:%Y-%m-%d %H:%M:%S}.000000", f"{ts[720]:%Y-%m-%d %H:%M:%S}.000000"]
    (tmp_path / "labels" / "combined_windows.json").write_text(json.dumps({"cat/f.csv": [window]}))
    probation = Series("cat/f.csv", ts[:150].to_numpy(), x[:150])
    (vs,) = holdout.from_record(training.data_info(probation, holdout.corpus_source(tmp_path)))
    assert vs.name == "cat/f.csv" and vs.train_rows == 150 and vs.windows == [(700, 720)]
    gone = training.data_info(Series("cat/g.csv", ts[:150].to_numpy(), x[:150]), holdout.corpus_source(tmp_path))
    with pytest.raises(LifecycleError, match="no file 'cat/g.csv'"):
        holdout.from_record(gone)


# -- measuring -------------------------------------------------------------------------------------
def test_a_fitted_model_is_measured_without_refitting(good, validation):
    before = good.calibrator_.threshold_
    report = gate.evaluate(good, validation)
    assert report.error is None and good.calibrator_.threshold_ == before
    assert report.nab_standard > 50 and report.windows == 3
    assert 0 < report.recall <= 1 and 0 < report.precision <= 1
    assert report.nonfinite_fraction == 0.0
    assert 0.0 <= report.score_min < report.score_max <= 1.0 and report.score_std > 0
    assert 0 < report.alarm_rate < 0.05
    assert 0 < report.latency_ms < 50 and report.latency_p95_ms >= report.latency_ms * 0.5
    assert report.rows == presets.UP_ROWS - validation[0].train_rows


def test_a_better_challenger_passes_and_a_worse_one_is_rejected_with_the_scores(good, poor, validation):
    g, p = gate.evaluate(good, validation, version=2), gate.evaluate(poor, validation, version=1)
    assert g.nab_standard > p.nab_standard + 10
    up = gate.decide(g, p)
    assert up.passed and "challenger v2 is better" in up.reason and "champion v1" in up.reason
    assert up.metrics["nab_gain"] == pytest.approx(g.nab_standard - p.nab_standard)
    assert up.metrics["champion.nab_standard"] == p.nab_standard
    down = gate.decide(p, g)
    assert not down.passed and "not better by the margin" in down.reason
    strict = gate.decide(g, p, GatePolicy(margin=100))
    assert not strict.passed and "margin 100" in strict.reason
    assert gate.decide(p, None).passed  # no champion: the checks are enough


def test_a_model_that_may_use_more_history_than_the_data_holds_is_judged_from_its_first_score(validation):
    """A seasonal baseline of twenty half-day cycles may use 2,881 rows of history; the validation series
    has 2,016. Its scores start after one cycle, so everything after the training rows is judged."""
    model = _fit({"period": 144, "cycles": 20}, family="seasonal")
    assert model.detector.context > len(validation[0].values) > validation[0].train_rows
    report = gate.evaluate(model, validation)
    assert report.rows == len(validation[0].values) - validation[0].train_rows
    assert report.score_std > 0 and report.windows > 0
    assert "constant" not in " ".join(gate.problems(report, GatePolicy()))


def test_nan_scores_are_rejected(validation):
    broken = _fit()
    broken.detector.spread_floor_ = float("nan")  # corrupted state: every raw score is NaN
    report = gate.evaluate(broken, validation)
    assert report.nonfinite_fraction == 1.0
    decision = gate.decide(report, None)
    assert not decision.passed and "non-finite (NaN/inf) scores on 100.0% of rows" in decision.reason


def test_a_model_that_crashes_is_rejected_naming_the_crash(good, validation):
    class Crashing:
        detector, alarm = good.detector, good.alarm

        def score(self, values):
            raise RuntimeError("shape mismatch in layer 3")

    report = gate.evaluate(Crashing(), validation)
    assert report.error == "crashed while scoring: RuntimeError: shape mismatch in layer 3"
    decision = gate.decide(report, gate.evaluate(good, validation))
    assert not decision.passed and "shape mismatch in layer 3" in decision.reason


def test_a_step_slower_than_the_budget_is_rejected(good, validation):
    policy = GatePolicy(latency_budget_ms=1e-6, latency_calls=20)
    decision = gate.decide(gate.evaluate(good, validation, policy), None, policy)
    assert not decision.passed and "exceeds the latency budget of 1e-06 ms" in decision.reason


def test_calibration_and_alarm_checks_name_what_is_wrong():
    sane = GateReport(version=3, rows=100, score_min=0.0, score_max=0.9, score_std=0.1, alarm_rate=0.01,
                      latency_ms=1.0, precision=0.5, recall=0.5, nab_standard=50.0)
    assert gate.problems(sane, GatePolicy()) == []
    cases = {
        "outside [0, 1]": {"score_max": 1.5},
        "constant": {"score_std": 0.0},
        "alarms on 40.0% of rows": {"alarm_rate": 0.4},
    }
    for text, change in cases.items():
        report = GateReport(**{**sane.to_dict(), **change})
        (problem,) = gate.problems(report, GatePolicy())
        assert text in problem
    picky = GatePolicy(min_precision=0.9, min_recall=0.9)
    assert [p.split()[1] for p in gate.problems(sane, picky)] == ["precision", "recall"]


def test_a_broken_champion_does_not_block_a_sound_challenger(good, validation):
    champion = GateReport(version=1, error="failed to load: state.npz is corrupt")
    decision = gate.decide(gate.evaluate(good, validation, version=2), champion)
    assert decision.passed and "champion v1 does not (failed to load" in decision.reason


def test_policy_rejects_unknown_keys_and_bad_values():
    assert GatePolicy.from_dict({"margin": 2.5}).margin == 2.5
    with pytest.raises(InvalidParameterError, match="margn"):
        GatePolicy.from_dict({"margn": 1})
    with pytest.raises(InvalidParameterError, match="latency_budget_ms"):
        GatePolicy.from_dict({"latency_budget_ms": 0})
    with pytest.raises(InvalidParameterError, match="at least one held-out"):
        gate.evaluate(object(), [])
