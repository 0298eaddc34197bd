"""EyeNet's Prometheus metrics (prometheus-client), exposed by the router on ``/metrics``."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from eyenet.monitoring.drift import DriftMonitor
    from eyenet.monitoring.feedback import Feedback, FeedbackTracker

REGISTRY = CollectorRegistry(auto_describe=True)
_MS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 250, 500, 1000, 2500)

REQUEST_LATENCY = Histogram("eyenet_request_latency_ms", "End-to-end latency of an API request in the router",
                            ["endpoint"], buckets=_MS, registry=REGISTRY)
DETECTOR_LATENCY = Histogram("eyenet_detector_latency_ms", "Latency of one member deployment call, as the router sees it",
                             ["detector"], buckets=_MS, registry=REGISTRY)
BATCH_SIZE = Histogram("eyenet_batch_size", "Requests per dynamic batch in a detector deployment", ["detector"],
                       buckets=(1, 2, 4, 8, 16, 32, 64), registry=REGISTRY)
POINTS = Counter("eyenet_points_scored_total", "Points scored", ["model"], registry=REGISTRY)
ANOMALIES = Counter("eyenet_anomalies_flagged_total", "Points that raised an alarm", ["model"], registry=REGISTRY)
ERRORS = Counter("eyenet_errors_total", "Errors by kind (bad_input, unknown_name, member_failed, unavailable, "
                 "registry, controller, monitor, internal)",
                 ["kind"], registry=REGISTRY)
DEGRADED = Counter("eyenet_degraded_responses_total", "Responses answered without some members", ["model"],
                   registry=REGISTRY)
STATE_MOVES = Counter("eyenet_stream_state_moves_total", "Series states that left a router replica's keeping, by "
                      "reason (handed_over: another replica asked for the series; released: the replica's cache was "
                      "full or it shut down; lost: the store refused a written-behind state because the series had "
                      "gone to another replica or been reset meanwhile)", ["reason"], registry=REGISTRY)
ALERTS = Counter("eyenet_alerts_total", "Alert transitions of series incidents (firing, resolved, resent)",
                 ["transition"], registry=REGISTRY)
ALERT_DELIVERIES = Counter("eyenet_alert_deliveries_total", "Alert deliveries by receiver kind and outcome (sent, "
                           "retried, dead_letter: given up after max_attempts or refused for good, dropped: over "
                           "the queue's bound)", ["receiver", "outcome"], registry=REGISTRY)
EVICTIONS = Counter("eyenet_evictions_total", "Entries dropped from a bounded structure to stay within its cap, by "
                    "structure (store: stream states, store_reload: rows not reloaded after a restart, "
                    "router_streams / router_models: a router's caches, rate_buckets, outbox, monitor_series, "
                    "monitor_models)", ["structure"], registry=REGISTRY)
QUOTA_REFUSED = Counter("eyenet_quota_refused_total", "Requests refused (429) by quota: requests/s, points/s, "
                        "series (a tenant's live series), store_full (every stored series busy), new_series/s (waiting too long "
                        "for the pace of new series)", ["quota"],
                        registry=REGISTRY)
QUOTA_PACED = Counter("eyenet_quota_paced_seconds_total", "Seconds requests waited for their tenant's pace of new "
                      "series (quota.new_series_per_s)", registry=REGISTRY)
REMOTE_WRITE = Counter("eyenet_remote_write_samples_total", "Samples received through remote_write, by outcome: "
                       "scored; imputed (a missing value, or a point filled into a gap: not scored); unselected "
                       "(no rule matches the series, or it is a score EyeNet wrote back); late (at or before the "
                       "series' last sample: out of order or a duplicate; or a missing value with nothing before "
                       "it to carry); stale (a staleness marker: the series ends); refused (the tenant's series "
                       "quota); conflict (the series kept moving on elsewhere); invalid (an infinity, or a series "
                       "id EyeNet cannot take)", ["outcome"], registry=REGISTRY)
WRITEBACK = Counter("eyenet_writeback_samples_total", "Score samples written back through remote_write, by outcome: "
                    "sent, dropped (the queue was full: oldest first), rejected (the receiver refused them with a "
                    "4xx: not retried), late (at or before a point of the series already written)", ["outcome"],
                    registry=REGISTRY)
WRITEBACK_RETRIES = Counter("eyenet_writeback_retries_total", "Write-back requests retried after an error or a 5xx/429",
                            registry=REGISTRY)
MODEL_VERSION = Gauge("eyenet_model_version", "Registered model version served", ["model", "detector"],
                      registry=REGISTRY)

# -- monitoring: drift, operator feedback, model age (fed by eyenet.monitoring.drift and eyenet.monitoring.feedback) --
DRIFT_SCORE = Gauge("eyenet_drift_score", "Drift of a model's recent inputs or scores from its training reference, "
                    "by test: psi (population stability index), ks (Kolmogorov-Smirnov statistic), tail (share above "
                    "the reference's 95th percentile / the reference's share); NaN until the window is full enough",
                    ["model", "feature", "test"], registry=REGISTRY)
DRIFT_THRESHOLD = Gauge("eyenet_drift_threshold", "Value of eyenet_drift_score above which a test calls drift",
                        ["test"], registry=REGISTRY)
DRIFTED = Gauge("eyenet_drifted", "1 when any drift test calls the feature drifted, else 0", ["model", "feature"],
                registry=REGISTRY)
FEEDBACK = Counter("eyenet_feedback_total", "Points labelled by operators (true_anomaly, false_alarm, missed_anomaly)",
                   ["model", "label"], registry=REGISTRY)
PRECISION = Gauge("eyenet_precision", "True anomalies / labelled alarms over the feedback window "
                  "(NaN until enough alarms are labelled)", ["model"], registry=REGISTRY)
FALSE_POSITIVE_RATE = Gauge("eyenet_false_positive_rate", "False alarms / points scored over the feedback window",
                            ["model"], registry=REGISTRY)
ALARM_RATE = Gauge("eyenet_alarm_rate", "Alarms / points scored over the feedback window", ["model"],
                   registry=REGISTRY)
MODEL_CREATED = Gauge("eyenet_model_created_timestamp_seconds", "When the served version of a model was registered "
                      "(unix seconds)", ["model"], registry=REGISTRY)


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def publish_drift(monitor: DriftMonitor) -> None:
    """Set the drift gauges from a monitor's current report (call it before exposing /metrics).
    Models the monitor no longer watches disappear from the gauges."""
    from eyenet.core.reference import TESTS

    report = monitor.report()
    DRIFT_SCORE.clear()
    DRIFTED.clear()
    for test in TESTS:
        DRIFT_THRESHOLD.labels(test).set(monitor.thresholds.of(test))
    for model, features in report.items():
        for feature, r in features.items():
            for test in TESTS:
                DRIFT_SCORE.labels(model, feature, test).set(_nan(r.score(test)))
            DRIFTED.labels(model, feature).set(1 if r.drifted else 0)


def publish_feedback(tracker: FeedbackTracker) -> None:
    """Set the precision, false-positive-rate and alarm-rate gauges from a tracker's window."""
    for model, r in tracker.report().items():
        w = r["window"]
        PRECISION.labels(model).set(_nan(w["precision"]))
        FALSE_POSITIVE_RATE.labels(model).set(_nan(w["false_positive_rate"]))
        ALARM_RATE.labels(model).set(_nan(w["alarm_rate"]))


def count_feedback(feedback: Feedback) -> None:
    """Count a received label (call it with :meth:`FeedbackTracker.record`)."""
    FEEDBACK.labels(feedback.model, feedback.label).inc(feedback.points)


def set_model_created(model: str, created: float) -> None:
    """Record when the served version of ``model`` was registered (``VersionInfo.created``)."""
    MODEL_CREATED.labels(model).set(created)


def exposition() -> bytes:
    return generate_latest(REGISTRY)
