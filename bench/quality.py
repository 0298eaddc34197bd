"""Detector quality on a NAB-format corpus: every family and the ensemble.

    python -m bench.quality [--corpus ../shared/nab] [--detectors a,b] [--workers 2]

Prints a Markdown table: NAB scores for the three profiles at the optimised
threshold, the standard score at the model's own alarm threshold, and the
wall time to fit and score the whole corpus (files run in parallel processes).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from eyenet.core import detectors, evaluation, nab, presets
from eyenet.core.scoring import score_corpus

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "nab"


def run(corpus: Path, names: list[str], workers: int) -> list[dict]:
    files = nab.read_corpus(corpus)
    loaded = {cf.key: nab.load_file(cf) for cf in files}
    wins = {cf.key: nab.window_rows(loaded[cf.key].timestamps, cf.windows) for cf in files}
    rows = []
    for name in names:
        config = presets.model_config(name)
        t0 = time.perf_counter()
        res = {cf.key: r for cf, r in score_corpus(files, config, workers=workers)}
        seconds = time.perf_counter() - t0
        arrays = [(res[cf.key].scores, wins[cf.key], res[cf.key].probation) for cf in files]
        rep = evaluation.score_arrays(arrays, keys=[cf.key for cf in files], own_threshold=presets.alarm_threshold())
        p = rep.profiles
        rows.append({
            "detector": name,
            "standard": p["standard"].score,
            "reward_low_fp": p["reward_low_fp"].score,
            "reward_low_fn": p["reward_low_fn"].score,
            "threshold": p["standard"].threshold,
            "own_standard": p["standard"].own_score,
            "own_low_fp": p["reward_low_fp"].own_score,
            "own_low_fn": p["reward_low_fn"].own_score,
            "seconds": seconds,
            "rows": rep.n_rows,
        })
        print(f"{name}: standard {p['standard'].score:.1f} in {seconds:.0f}s", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = [
        "| detector | standard | low FP | low FN | opt. threshold | standard @own | low FP @own | low FN @own | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['detector']} | {r['standard']:.1f} | {r['reward_low_fp']:.1f} | {r['reward_low_fn']:.1f} | "
            f"{r['threshold']:.3f} | {r['own_standard']:.1f} | {r['own_low_fp']:.1f} | {r['own_low_fn']:.1f} | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--detectors", default=",".join(detectors.available()))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if not (args.corpus / "data").is_dir():
        raise SystemExit(f"bench.quality: no NAB corpus at {args.corpus}")
    rows = run(args.corpus, [n for n in args.detectors.split(",") if n], args.workers)
    print()
    print(table(rows))
    ens = next((r for r in rows if r["detector"] == "ensemble"), None)
    if ens:
        members = [m["family"] for m in detectors.create("ensemble").member_configs]
        beaten = [r["detector"] for r in rows if r["detector"] in members and r["standard"] >= ens["standard"]]
        print(f"\nensemble members: {', '.join(members)}; members scoring at least the ensemble: {beaten or 'none'}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
