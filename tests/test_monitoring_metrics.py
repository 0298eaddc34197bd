"""Drift, feedback and model-age figures as Prometheus series on EyeNet's registry."""
from __future__ import annotations

import math

import numpy as np
import pytest

from eyenet.monitoring import metrics as m
from eyenet.core.reference import DriftReference, Reference
from eyenet.monitoring.drift import DriftMonitor, Thresholds
from eyenet.monitoring.feedback import Feedback, FeedbackTracker


def _value(name: str, **labels: str) -> float | None:
    return m.REGISTRY.get_sample_value(name, labels)


@pytest.fixture
def monitor():
    rng = np.random.default_rng(0)
    mon = DriftMonitor(min_points=100, recompute_every=1, thresholds=Thresholds(psi=0.25))
    for name in ("t.calm.ensemble", "t.drifting.ensemble", "t.young.ensemble"):
        mon.set_reference(name, DriftReference({"value": Reference.from_values(rng.normal(0, 1, 2000))}))
    mon.observe("t.calm.ensemble", "value", rng.normal(0, 1, 1000))
    mon.observe("t.drifting.ensemble", "value", rng.normal(2, 1, 1000))
    mon.observe("t.young.ensemble", "value", rng.normal(2, 1, 50))
    yield mon
    m.DRIFT_SCORE.clear()
    m.DRIFTED.clear()


def test_drift_report_becomes_scores_flags_and_thresholds(monitor):
    m.publish_drift(monitor)
    calm = _value("eyenet_drift_score", model="t.calm.ensemble", feature="value", test="psi")
    drifting = _value("eyenet_drift_score", model="t.drifting.ensemble", feature="value", test="psi")
    assert calm < 0.1 and drifting > 0.25
    assert _value("eyenet_drift_score", model="t.drifting.ensemble", feature="value", test="ks") > 0.5
    assert _value("eyenet_drift_score", model="t.drifting.ensemble", feature="value", test="tail") > 2
    assert _value("eyenet_drifted", model="t.calm.ensemble", feature="value") == 0
    assert _value("eyenet_drifted", model="t.drifting.ensemble", feature="value") == 1
    assert _value("eyenet_drift_threshold", test="psi") == 0.25  # the configured threshold, for the alert rule
    assert math.isnan(_value("eyenet_drift_score", model="t.young.ensemble", feature="value", test="psi"))
    assert _value("eyenet_drifted", model="t.young.ensemble", feature="value") == 0
    text = m.exposition().decode()
    assert 'eyenet_drift_score{feature="value",model="t.young.ensemble",test="psi"} NaN' in text


def test_a_model_no_longer_watched_leaves_the_drift_gauges(monitor):
    m.publish_drift(monitor)
    monitor.drop("t.drifting.ensemble")
    m.publish_drift(monitor)
    assert _value("eyenet_drifted", model="t.drifting.ensemble", feature="value") is None
    assert _value("eyenet_drifted", model="t.calm.ensemble", feature="value") == 0


def test_feedback_becomes_label_counters_and_rate_gauges():
    tr = FeedbackTracker(None, min_labels=4)
    name = "t.fb.ensemble"
    before = _value("eyenet_feedback_total", model=name, label="false_alarm") or 0.0
    tr.record_alarms(name, 2000, 40)
    for label, n in (("true_anomaly", 3), ("false_alarm", 1)):
        fb = Feedback(model=name, series="s", label=label, points=n, indices=list(range(n)))
        tr.record(fb)
        m.count_feedback(fb)
    m.publish_feedback(tr)
    assert _value("eyenet_feedback_total", model=name, label="false_alarm") == before + 1
    assert _value("eyenet_precision", model=name) == 0.75
    assert _value("eyenet_false_positive_rate", model=name) == 0.0005
    assert _value("eyenet_alarm_rate", model=name) == 0.02
    quiet = FeedbackTracker(None, min_labels=4)
    quiet.record_alarms("t.quiet.ensemble", 10, 0)
    m.publish_feedback(quiet)
    assert math.isnan(_value("eyenet_precision", model="t.quiet.ensemble"))  # no labels: unknown, not 0


def test_model_creation_time_is_exported():
    m.set_model_created("t.age.ensemble", 1_700_000_000.0)
    assert _value("eyenet_model_created_timestamp_seconds", model="t.age.ensemble") == 1_700_000_000.0
