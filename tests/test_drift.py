"""Drift references and the drift monitor: PSI, KS and the tail check against a training reference."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from eyenet.core import presets, synthetic
from eyenet.lifecycle import training
from eyenet.core.reference import DriftReference, Reference
from eyenet.monitoring.drift import DriftMonitor, Thresholds
from eyenet.core.errors import ArtifactError, InvalidParameterError, NotEnoughDataError
from eyenet.core.model import AnomalyModel, Scores


def _normal(seed: int, n: int, loc: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc, 1.0, n)


def _monitor(ref: Reference | None = None, **kw) -> DriftMonitor:
    mon = DriftMonitor(**kw)
    mon.set_reference("m", DriftReference({"value": ref or Reference.from_values(_normal(0, 2000))}))
    return mon


# -- the reference -------------------------------------------------------------------------------


def test_reference_bins_are_reference_quantiles_and_round_trip_through_json():
    ref = Reference.from_values(_normal(0, 2000))
    assert len(ref.edges) == 9 and ref.n == 2000
    assert ref.counts.min() >= 190 and ref.counts.max() <= 210  # equal-probability bins
    assert len(ref.sketch) == 1000 and np.all(np.diff(ref.sketch) >= 0)
    assert ref.tail_rate == pytest.approx(0.05, abs=0.002)
    back = Reference.from_dict(json.loads(json.dumps(ref.to_dict(), allow_nan=False)))
    for a, b in ((ref.edges, back.edges), (ref.counts, back.counts), (ref.sketch, back.sketch)):
        np.testing.assert_array_equal(a, b)
    x = _normal(1, 500, 0.5)
    assert back.psi(x) == ref.psi(x) and back.ks(x) == ref.ks(x)


def test_reference_of_tied_values_merges_bins_and_skips_non_finite():
    x = np.concatenate((np.zeros(700), np.linspace(0.1, 1, 300), [np.nan, np.inf]))
    ref = Reference.from_values(x)
    assert ref.n == 1000 and ref.edges[0] == 0.0 and ref.counts[0] == 700  # one bin holds every zero
    assert np.all(np.diff(ref.edges) > 0)
    with pytest.raises(NotEnoughDataError):
        Reference.from_values([1.0, 2.0, np.nan])


def test_corrupt_reference_is_an_artifact_error():
    good = DriftReference({"value": Reference.from_values(_normal(0, 100))}).to_dict()
    bad = json.loads(json.dumps(good))
    bad["features"]["value"]["counts"] = [1, 2]
    with pytest.raises(ArtifactError, match="value|counts|edges"):
        DriftReference.from_dict(bad)
    with pytest.raises(ArtifactError, match="format"):
        DriftReference.from_dict({**good, "format": 99})


# -- the tests hold up across sample sizes --------------------------------------------------------


def test_psi_stays_low_without_drift_and_high_with_it_at_every_window_size():
    ref = Reference.from_values(_normal(0, 2000))
    calm = {n: ref.psi(_normal(n, n)) for n in (200, 1000, 5000)}
    shifted = {n: ref.psi(_normal(n + 1, n, loc=1.0)) for n in (200, 1000, 5000)}
    assert max(calm.values()) < 0.15, calm
    assert min(shifted.values()) > 0.3, shifted
    assert max(shifted.values()) / min(shifted.values()) < 1.5, shifted  # about the same PSI whatever n


def test_ks_needs_an_effect_size_not_just_a_small_p_value():
    mon = _monitor(window=50_000, min_points=200)
    mon.observe("m", "value", _normal(7, 50_000, loc=0.15))  # a small shift in a huge window
    r = mon.check("m", "value")
    assert r.ks_pvalue < 0.01 and r.ks < 0.1  # "significant", yet small
    assert r.tail_pvalue < 0.01 and r.tail_ratio < 2  # same for the tail share
    assert not r.drifted
    mon.observe("m", "value", _normal(8, 50_000, loc=0.8))
    r = mon.check("m", "value")
    assert r.ks > 0.2 and "ks" in r.drifted_by and "psi" in r.drifted_by


def test_tail_check_flags_more_exceedances_of_the_reference_tail():
    ref_scores = np.random.default_rng(3).uniform(0, 1, 2000)  # 5 % above 0.95
    mon = DriftMonitor(thresholds=Thresholds(psi=5.0, ks=0.99))  # only the tail test can fire
    mon.set_reference("m", DriftReference({"score": Reference.from_values(ref_scores)}))
    live = np.random.default_rng(4).uniform(0, 1, 1000)
    live[:150] = np.random.default_rng(5).uniform(0.96, 1.0, 150)  # 15 % above the edge
    mon.observe("m", "score", live)
    r = mon.check("m", "score")
    assert r.tail_rate == pytest.approx(0.15 + 0.85 * 0.05, abs=0.02)
    assert r.tail_ratio > 3 and r.tail_pvalue < 1e-6 and r.drifted_by == ["tail"]


# -- the monitor ----------------------------------------------------------------------------------


def test_window_is_bounded_and_drift_shows_once_recent_points_replace_old_ones():
    mon = _monitor(window=1000, min_points=200, recompute_every=1)
    mon.observe("m", "value", _normal(1, 3000))
    r = mon.check("m", "value")
    assert r.points == 1000 and r.ready and not r.drifted
    mon.observe("m", "value", _normal(3, 1000, loc=1.5))
    r = mon.check("m", "value")
    assert r.points == 1000 and r.psi > 1.0 and set(r.drifted_by) == {"psi", "ks", "tail"}
    assert mon.drifted("m") == {"value": True}


def test_too_few_points_is_not_ready_rather_than_no_drift():
    mon = _monitor(min_points=200)
    mon.observe("m", "value", np.r_[_normal(1, 150, loc=5.0), np.nan, np.inf])
    r = mon.check("m", "value")
    assert r.points == 150 and not r.ready and r.psi is None and not r.drifted
    assert r.to_dict()["drifted"] is False


def test_tests_run_lazily_at_most_once_per_recompute_every_points():
    mon = _monitor(min_points=200, recompute_every=100)
    mon.observe("m", "value", _normal(1, 200))
    first = mon.check("m", "value")
    mon.observe("m", "value", _normal(2, 99, loc=9.0))
    assert mon.check("m", "value") is first  # cached: fewer than 100 new points
    mon.observe("m", "value", _normal(3, 1, loc=9.0))
    again = mon.check("m", "value")
    assert again is not first and again.points == 300 and again.psi > first.psi


def test_unknown_models_are_ignored_and_a_new_reference_starts_an_empty_window():
    mon = _monitor()
    mon.observe("other", "value", _normal(1, 500))
    mon.observe("m", "nope", _normal(1, 500))
    assert mon.report().keys() == {"m"}
    with pytest.raises(InvalidParameterError):
        mon.check("other", "value")
    mon.observe("m", "value", _normal(1, 500))
    assert mon.check("m", "value").points == 500
    mon.set_reference("m", DriftReference({"value": Reference.from_values(_normal(9, 500, loc=3.0))}))
    assert mon.check("m", "value").points == 0
    mon.drop("m")
    assert mon.report() == {}


def test_thresholds_are_configurable_and_validated():
    ref = Reference.from_values(_normal(0, 2000))
    x = _normal(1, 1000, loc=0.7)
    strict, lenient = _monitor(ref), _monitor(ref, thresholds=Thresholds(psi=2.0, ks=0.9, tail=50))
    for mon in (strict, lenient):
        mon.observe("m", "value", x)
    assert 0.3 < strict.check("m", "value").psi < 2.0
    assert strict.drifted("m")["value"] and not lenient.drifted("m")["value"]
    with pytest.raises(InvalidParameterError, match="psi"):
        DriftMonitor(thresholds=Thresholds(psi=0))
    with pytest.raises(InvalidParameterError, match="min_points"):
        DriftMonitor(window=100, min_points=200)


def test_observing_while_reporting_from_another_thread_is_safe():
    mon = _monitor(min_points=10, recompute_every=1)
    errors = []

    def read():
        try:
            for _ in range(200):
                mon.report()
        except Exception as exc:  # noqa: BLE001 - collected for the assert
            errors.append(exc)

    t = threading.Thread(target=read)
    t.start()
    for i in range(2000):
        mon.observe("m", "value", [float(i % 7)])
    t.join()
    assert not errors


# -- the reference of a model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def zscore_model():
    _, values, _ = synthetic.series("cpu_pct", n=1200, seed=3, anomalies_per_metric=0)
    values = np.asarray(values)
    return AnomalyModel.from_dict(presets.model_config("zscore")).fit(values[:800]), values


def test_model_reference_holds_values_and_scores_and_feeds_from_scores(zscore_model):
    model, values = zscore_model
    ref = DriftReference.from_model(model, values[:800])
    assert set(ref.features) == {"value", "calibrated", "score"}
    json.dumps(ref.to_dict(), allow_nan=False)
    mon = DriftMonitor(min_points=50)
    mon.set_reference(model.name, ref)
    live = values[800:] + 40.0  # the level moved
    scores = model.score(live)
    assert isinstance(scores, Scores)
    mon.observe_scores(model.name, live, scores)
    report = mon.report()[model.name]
    assert report["value"].points == 400 and report["value"].drifted
    assert report["score"].points == int(np.isfinite(scores.score).sum())
    short = DriftReference.from_model(model, values[:30])  # too short for the model's history
    assert "value" in short.features and "score" not in short.features


def test_registered_version_records_its_drift_reference(mlflow_store):
    _, values, _ = synthetic.series("latency_ms", n=900, seed=5, anomalies_per_metric=0)
    values = np.asarray(values)
    result = training.train_and_register(presets.model_config("zscore"), values, registry=mlflow_store,
                                         group="drift-ref")
    v = result.version
    got = mlflow_store.drift_reference(v.name, v.version)
    want = DriftReference.from_model(result.model, values[-1000:])  # the probe train_and_register passes
    assert got.to_dict() == json.loads(json.dumps(want.to_dict()))
    assert mlflow_store.drift_reference(v.name, alias="challenger").to_dict() == got.to_dict()
    # the file in the run's artifacts: corrupt it, then remove it (a version from before references)
    run = mlflow_store.client.get_run(v.run_id)
    path = Path(run.info.artifact_uri.removeprefix("file://")) / "eyenet" / "drift_reference.json"
    path.write_text("{not json")
    with pytest.raises(ArtifactError, match="drift_reference.json"):
        mlflow_store.drift_reference(v.name, v.version)
    path.unlink()
    assert mlflow_store.drift_reference(v.name, v.version) is None
