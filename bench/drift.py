"""Cost of drift and feedback monitoring on the serving path, against the scoring it rides on.

    python -m bench.drift [--calls 2000]

Measures, in the same run, with the default ensemble trained on 1,500 points
of a synthetic ``cpu_pct`` series: one streaming step of the model (1 point,
full state) and a 100-point window; what the serving path adds per request
(``DriftMonitor.observe_scores`` for the value, calibrated and final score,
and ``FeedbackTracker.record_alarms``) for 1 and 100 points; and what a read
costs (the three drift tests of one feature over a full 1,000-point window,
a whole report of one model, publishing it into the Prometheus gauges).
"""
from __future__ import annotations

import argparse

from bench.latency import median_ms
from eyenet.monitoring import metrics
from eyenet.core import presets, synthetic
from eyenet.core.reference import DriftReference
from eyenet.monitoring.drift import DriftMonitor
from eyenet.monitoring.feedback import FeedbackTracker
from eyenet.core.model import AnomalyModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    _, x, _ = synthetic.series("cpu_pct", n=7000, seed=1, anomalies_per_metric=0)
    train, live = x[:1500], x[1500:]
    model = AnomalyModel.from_dict(presets.model_config("ensemble")).fit(train)
    name = "default.default.ensemble"
    ref = DriftReference.from_model(model, train[-1000:])
    _, state = model.score_stream(live[:-100])
    point, window = live[-1:], live[-100:]
    s1, _ = model.score_stream(point, state)
    s100, _ = model.score_stream(window, state)

    monitor = DriftMonitor()
    monitor.set_reference(name, ref)
    tracker = FeedbackTracker(None)
    monitor.observe_scores(name, live[-1000:], model.score_stream(live[-1000:], state)[0])

    def per_request(v, s):
        monitor.observe_scores(name, v, s)
        tracker.record_alarms(name, len(v), int(s.alarm.sum()))

    # a monitor that reruns the tests after every new point: what a read costs once the cache is stale
    eager = DriftMonitor(recompute_every=1)
    eager.set_reference(name, ref)
    eager.observe_scores(name, live[-1000:], model.score_stream(live[-1000:], state)[0])

    def fresh_check():
        eager.observe(name, "value", point)
        return eager.check(name, "value")

    def fresh_report():
        eager.observe_scores(name, point, s1)
        return eager.report(name)

    rows = [
        ("ensemble model stream step, 1 point", median_ms(lambda: model.score_stream(point, state), args.calls // 4)),
        ("ensemble model stream step, 100 points", median_ms(lambda: model.score_stream(window, state), 100)),
        ("monitoring per request (observe_scores + record_alarms), 1 point", median_ms(lambda: per_request(point, s1),
                                                                                        args.calls)),
        ("monitoring per request, 100 points", median_ms(lambda: per_request(window, s100), args.calls)),
        ("DriftMonitor.observe, 1 point, one feature", median_ms(lambda: monitor.observe(name, "value", point),
                                                                 args.calls)),
        ("drift tests of one feature (PSI + KS + tail), 1,000-point window", median_ms(fresh_check, 200)),
        ("drift report of one model (3 features), recomputed", median_ms(fresh_report, 100)),
        ("drift report of one model, cached", median_ms(lambda: monitor.report(name), args.calls)),
        ("publish_drift + publish_feedback into the gauges (cached report)",
         median_ms(lambda: (metrics.publish_drift(monitor), metrics.publish_feedback(tracker)), args.calls // 4)),
    ]
    print("| path | median ms |\n|---|---:|")
    for k, v in rows:
        print(f"| {k} | {v:.4f} |")
    step1, step100, mon1, mon100 = (r[1] for r in rows[:4])
    print(f"\nper-request monitoring / scoring: {100 * mon1 / step1:.1f} % at 1 point, "
          f"{100 * mon100 / step100:.1f} % at 100 points")


if __name__ == "__main__":
    main()
