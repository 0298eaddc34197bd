"""The supervised member on labelled synthetic telemetry: the default ensemble with and without a
classifier learned from labels, judged by the deployment gate on rows neither saw.

    python -m bench.supervised [--kinds spike,dip] [--rows 4032] [--per-metric 6] [--seed 11]

Every metric of the synthetic telemetry gets ``--per-metric`` anomalies of ``--kinds`` over the whole
series (what operators would have labelled); :func:`eyenet.lifecycle.supervised.compare` fits both
models on the first 70 % with the labels and the gate scores both on the last 30 %. Prints one row
per metric and the totals: windows found (recall), alarm precision, NAB standard, the gate's choice.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from eyenet.core import presets, synthetic
from eyenet.lifecycle import supervised


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="spike,dip")
    ap.add_argument("--rows", type=int, default=4032)
    ap.add_argument("--per-metric", type=int, default=6)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    t = synthetic.generate(n=args.rows, seed=args.seed, anomalies_per_metric=args.per_metric, kinds=kinds,
                           anomaly_free_prefix=0.05)
    print("| metric | windows judged | found with / without | precision with / without | NAB standard with / "
          "without | classifier |")
    print("|---|---:|---:|---:|---:|---|")
    found = {"with": 0, "without": 0, "chosen": 0}
    alarms = {"with": [0, 0], "without": [0, 0]}
    kept = 0
    t0 = time.perf_counter()
    for m in synthetic.METRICS:
        x = t.frame[m].to_numpy()
        y = np.zeros(len(x))
        for a in t.anomalies[m]:
            y[a.start : a.end + 1] = 1
        try:
            c = supervised.compare(presets.model_config("ensemble"), x, y, name=m)
        except Exception as exc:  # noqa: BLE001 - a metric whose labels cannot be split is reported, not fatal
            print(f"| {m} | — | — | — | — | {exc} |")
            continue
        w, wo = c.with_report, c.without_report
        n = w.windows
        fw, fwo = round((w.recall or 0) * n), round((wo.recall or 0) * n)
        found["with"] += fw
        found["without"] += fwo
        for key, r in (("with", w), ("without", wo)):
            if r.precision is not None:
                total = int(round(r.alarm_rate * r.rows))
                alarms[key][0] += int(round(r.precision * total))
                alarms[key][1] += total
        kept += c.decision.passed
        found["chosen"] += fw if c.decision.passed else fwo
        fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"| {m} | {n} | {fw} / {fwo} | {fmt(w.precision)} / {fmt(wo.precision)} | "
              f"{w.nab_standard or 0:.1f} / {wo.nab_standard or 0:.1f} | "
              f"{'kept' if c.decision.passed else 'left out'} |")
    prec = {k: (v[0] / v[1] if v[1] else None) for k, v in alarms.items()}
    print(f"\nwindows found: with the classifier {found['with']}, without {found['without']}, the gate's choice "
          f"{found['chosen']}; alarm precision "
          f"with {prec['with'] if prec['with'] is None else round(prec['with'], 2)}, without "
          f"{prec['without'] if prec['without'] is None else round(prec['without'], 2)}; classifier kept on "
          f"{kept} of {len(synthetic.METRICS)} metrics ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
