"""A Ray Tune search (Optuna + ASHA) on the NAB subset, and whether it beats the defaults.

    python -m bench.tuning [--family ensemble] [--trials 16] [--corpus ../shared/nab]

The search sees every second file of the corpus (the tuning half); the best
configuration and the default one are then scored on the other half (held
out) and on the whole corpus, NAB standard profile at the optimised threshold.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from eyenet.cli import cluster
from eyenet.lifecycle import registry, tuning

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "nab"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="ensemble")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--concurrent", type=int, default=2)
    args = ap.parse_args()
    tune_half = tuning.from_corpus(args.corpus, every=2, offset=0)
    held_out = tuning.from_corpus(args.corpus, every=2, offset=1)
    everything = tuning.from_corpus(args.corpus)
    os.chdir(tempfile.mkdtemp(prefix="eyenet-bench-"))
    cluster.connect()
    reg = registry.Registry().check()
    from eyenet.tune import tuner

    t0 = time.perf_counter()
    result = tuner.search(args.family, tune_half, trials=args.trials, max_concurrent=args.concurrent, mlflow_uri=reg.uri)
    minutes = (time.perf_counter() - t0) / 60
    base = tuning.base_config(args.family)
    scores = {
        "default": [result.default_score, tuning.final_score(base, held_out)["nab_standard"],
                    tuning.final_score(base, everything)["nab_standard"]],
        "best": [result.best_score, tuning.final_score(result.best_config, held_out)["nab_standard"],
                 tuning.final_score(result.best_config, everything)["nab_standard"]],
    }
    print(f"\n{args.family}: {result.trials} trials, {result.stopped_early} stopped early by ASHA, {minutes:.1f} min")
    print(f"best sample: {json.dumps(result.best_sample, default=float)}")
    print(f"\n| configuration | tuning half ({len(tune_half)} files) | held-out half ({len(held_out)}) | whole subset ({len(everything)}) |")
    print("|---|---:|---:|---:|")
    for name, (a, b, c) in scores.items():
        print(f"| {name} | {a:.1f} | {b:.1f} | {c:.1f} |")


if __name__ == "__main__":
    main()
