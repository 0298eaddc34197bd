"""EyeNet's Prometheus metrics (prometheus-client), exposed by the router on ``/metrics``."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
ERRORS = Counter("eyenet_errors_total", "Errors by kind (bad_input, unknown_name, member_failed, overload, internal)",
                 ["kind"], registry=REGISTRY)
DEGRADED = Counter("eyenet_degraded_responses_total", "Responses answered without some members", ["model"],
                   registry=REGISTRY)
MODEL_VERSION = Gauge("eyenet_model_version", "Registered model version served", ["model", "detector"],
                      registry=REGISTRY)


def exposition() -> bytes:
    return generate_latest(REGISTRY)
