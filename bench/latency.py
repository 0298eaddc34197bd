"""In-process real-time latency: one new point, window prepared.

    python -m bench.latency [--calls 1000]

Measures, in the same run, on a 7,000-point series: the ensemble's calibrated,
combined score of one point (``score_last``), one streaming step of the full
model (rank, novelty, alarm state) with a full 5,000-score rank history per
member, the same step with the state restored from JSON first (as a service
that keeps state outside the process), each family's ``score_last``, and scikit-learn's
``IsolationForest.score_samples`` on one sample against EyeNet's vectorized
forest evaluator (same scores, checked here) on one sample and on 10,000.
Each torch family's one-window path and the ensemble's stream step are measured twice: through
ONNX Runtime (what serves) and through torch's own traced network (the runtime refused by setting
``ONE_WINDOW_TOLERANCE`` below zero), with the largest score difference between the two.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from eyenet.core import detectors, presets, synthetic
from eyenet.core.detectors import torch_common
from eyenet.core.model import AnomalyModel, StreamState


def torch_runner(model: AnomalyModel) -> None:
    """Make ``model``'s torch members answer one window through torch, not ONNX Runtime."""
    kept = torch_common.ONE_WINDOW_TOLERANCE
    torch_common.ONE_WINDOW_TOLERANCE = -1.0  # no runtime output passes the check
    try:
        model.warm()
    finally:
        torch_common.ONE_WINDOW_TOLERANCE = kept


def median_ms(fn, calls: int) -> float:
    for _ in range(min(50, calls)):
        fn()
    t = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--torch-threads", type=int, default=1, help="intra-op threads (a serving replica uses 1)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.torch_threads)
    # 7,000 points: the stream state holds a full 5,000-score rank history
    _, x, _ = synthetic.series("cpu_pct", n=7000, seed=1, anomalies_per_metric=0)
    train, live = x[:1500], x[1500:]
    whole = np.concatenate((train, live))
    rows = []
    diffs: list[tuple[str, float]] = []  # per family: the largest |ONNX Runtime - torch| raw score of 199 windows
    for name in detectors.available():
        if detectors.create(name).supervised:  # learns from labels: not scored on unlabelled telemetry here
            continue
        model = AnomalyModel.from_dict(presets.model_config(name)).fit(train)
        det = model.detector
        win = whole[-max(det.context, det.min_history) :]
        if name == "ensemble":
            label = "ensemble score_last (members scored, calibrated, combined)"
        else:
            label = f"{name} score_last (raw)"
        model.warm()
        rows.append((label, median_ms(lambda: det.score_last(win), args.calls)))
        if name == "ensemble":
            _, state = model.score_stream(live)
            assert all(len(h) == model.rank.history for h in state.scores)
            point = live[-1:]
            rows.append(("ensemble model stream step (1 point, full state)",
                         median_ms(lambda: model.score_stream(point, state), args.calls)))
            stored = json.dumps(state.to_dict())
            rows.append(("ensemble model stream step, state restored from JSON first",
                         median_ms(lambda: model.score_stream(point, StreamState.from_dict(json.loads(stored))),
                                   args.calls)))
        if any(isinstance(d, torch_common.TorchDetector) for d in model.members):
            windows = [whole[: len(train) + k][-len(win):] for k in range(1, 200)]
            fast = [det.score_last(w) for w in windows]
            torch_runner(model)
            slow = [det.score_last(w) for w in windows]
            diffs.append((name, float(np.nanmax(np.abs(np.subtract(fast, slow))))))
            rows.append((f"{label}, torch runner", median_ms(lambda: det.score_last(win), args.calls)))
            if name == "ensemble":
                rows.append(("ensemble model stream step (1 point, full state), torch runner",
                             median_ms(lambda: model.score_stream(point, state), args.calls)))
    forest = detectors.create("iforest").fit(train)
    feats = forest._features(train)
    one = feats[-1:]
    assert np.allclose(-forest.sklearn_.score_samples(feats), forest.forest_.score(feats), rtol=0, atol=1e-12)
    sk = median_ms(lambda: forest.sklearn_.score_samples(one), max(50, args.calls // 10))
    vec = median_ms(lambda: forest.forest_.score(one), args.calls)
    big = np.repeat(feats, int(np.ceil(10_000 / len(feats))), axis=0)[:10_000]
    sk_big = median_ms(lambda: forest.sklearn_.score_samples(big), 5)
    vec_big = median_ms(lambda: forest.forest_.score(big), 5)
    rows += [
        ("iforest sklearn score_samples, 1 sample", sk),
        ("iforest vectorized arrays, 1 sample", vec),
        ("iforest sklearn score_samples, 10,000 samples", sk_big),
        ("iforest vectorized arrays, 10,000 samples", vec_big),
    ]
    print("| path | median ms |\n|---|---:|")
    for k, v in rows:
        print(f"| {k} | {v:.3f} |")
    print("\nlargest raw-score difference, ONNX Runtime against torch, over 199 windows: "
          + ", ".join(f"{n} {d:.1e}" for n, d in diffs))
    print(f"\niforest one sample: vectorized is {sk / vec:.0f}x faster than scikit-learn (same scores, atol 1e-12)")
    print(f"iforest 10,000 samples: vectorized/scikit-learn time ratio {vec_big / sk_big:.2f}")


if __name__ == "__main__":
    main()
