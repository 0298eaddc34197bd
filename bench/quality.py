"""Detector quality on a NAB-format corpus: every family and the ensemble.

    python -m bench.quality [--corpus ../shared/nab] [--detectors a,b] [--workers 2]
    python -m bench.quality --loco [--workers 2]
    python -m bench.quality --demo 7,0,1 [--detectors a,b] [--workers 2]

Prints a Markdown table: NAB scores for the three profiles at the optimised
threshold, the standard score at each file's model's own alarm threshold, and the
wall time to fit and score the whole corpus (files run in parallel processes).

``--loco`` (leave one category out) scores each candidate ensemble of
:data:`CANDIDATES` on the corpus, then for each category chooses the candidate
and the thresholds on the *other* categories and scores the category with
them, beside its score with the choice made on every category (in-sample).
No setting depends on a file's name or category.

``--demo`` scores the families on ``eyenet demo``'s labelled telemetry instead, one
run per seed (seed 7 is what ``eyenet demo`` shows): injected anomalies found and
false alarms per 1,000 scored points, the ensemble beside every single family.
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from eyenet.cli import demo
from eyenet.core import detectors, evaluation, nab, presets
from eyenet.core.detectors.ensemble import DEFAULT_MEMBERS
from eyenet.core.errors import EyenetError
from eyenet.core.scoring import score_corpus

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "nab"


def _corpus(corpus: Path) -> tuple[list, dict]:
    """The corpus' files and each file's labelled windows as row ranges."""
    files = nab.read_corpus(corpus)
    return files, {cf.key: nab.window_rows(nab.load_file(cf).timestamps, cf.windows) for cf in files}


def _evaluate(files: list, wins: dict, config: dict, workers: int) -> tuple[list, evaluation.Report, float]:
    """Fit and score every file with ``config``: the (scores, windows, probation) arrays, their NAB
    report (own score at each file's model's threshold) and the wall time."""
    t0 = time.perf_counter()
    res = {cf.key: r for cf, r in score_corpus(files, config, workers=workers)}
    seconds = time.perf_counter() - t0
    arrays = [(res[cf.key].scores, wins[cf.key], res[cf.key].probation) for cf in files]
    rep = evaluation.score_arrays(arrays, keys=[cf.key for cf in files],
                                  own_threshold=[res[cf.key].threshold for cf in files])
    return arrays, rep, seconds


def run(corpus: Path, names: list[str], workers: int) -> list[dict]:
    files, wins = _corpus(corpus)
    rows = []
    for name in names:
        _, rep, seconds = _evaluate(files, wins, presets.model_config(name), workers)
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


#: the ensembles a leave-one-category-out run chooses among (members and weights; the default first)
CANDIDATES: dict[str, list[dict]] = {
    "default (seasonal 3 : lstm 1, lstm solo below 0.15)": [dict(m) for m in DEFAULT_MEMBERS],
    "seasonal + lstm 3:1, averaged": [{"family": "seasonal", "params": {}, "weight": 3.0},
                                      {"family": "lstm", "params": {}, "weight": 1.0}],
    "seasonal + lstm 3:1, lstm solo below 0.3": [{"family": "seasonal", "params": {}, "weight": 3.0},
                                                 {"family": "lstm", "params": {}, "weight": 1.0, "solo_below": 0.3}],
    "seasonal + gru 3:1, gru solo below 0.15": [{"family": "seasonal", "params": {}, "weight": 3.0},
                                                {"family": "gru", "params": {}, "weight": 1.0, "solo_below": 0.15}],
    "seasonal alone": [{"family": "seasonal", "params": {}, "weight": 1.0}],
}


def loco(corpus: Path, workers: int, candidates: dict[str, list[dict]] | None = None) -> tuple[list, dict]:
    """Leave one category out over ``candidates`` (default :data:`CANDIDATES`): the per-category
    rows (:class:`eyenet.core.evaluation.HeldOut`) and each candidate's whole-corpus report."""
    files, wins = _corpus(corpus)
    groups = [cf.key.split("/", 1)[0] for cf in files]
    arrays, reports = {}, {}
    for name, members in (candidates or CANDIDATES).items():
        config = presets.model_config("ensemble", {"members": members})
        arrays[name], reports[name], seconds = _evaluate(files, wins, config, workers)
        print(f"{name}: standard {reports[name].score('standard'):.1f} in {seconds:.0f}s", flush=True)
    return evaluation.leave_one_group_out(arrays, groups), reports


def loco_table(rows: list) -> str:
    fmt = lambda v: "—" if v is None else f"{v:.1f}"  # noqa: E731
    out = ["| category (files, windows) | chosen on the others | standard held out / in-sample | low FP | low FN "
           "| false detections held out |",
           "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r.group} ({r.files}, {r.windows}) | {r.chosen} | {fmt(r.held_out['standard'])} / "
                   f"{fmt(r.in_sample['standard'])} | {fmt(r.held_out['reward_low_fp'])} / "
                   f"{fmt(r.in_sample['reward_low_fp'])} | {fmt(r.held_out['reward_low_fn'])} / "
                   f"{fmt(r.in_sample['reward_low_fn'])} | {r.false_detections} |")
    scored = [r for r in rows if r.windows]
    for label, key in (("held out", "held_out"), ("in-sample", "in_sample")):
        means = {p: np.mean([getattr(r, key)[p] for r in scored]) for p in evaluation.PROFILES}
        out.append(f"\nmean over the {len(scored)} categories with windows, {label}: standard {means['standard']:.1f}, "
                   f"low FP {means['reward_low_fp']:.1f}, low FN {means['reward_low_fn']:.1f}")
    return "\n".join(out)


def _demo_metric(job: tuple[str, int, str]) -> tuple[str, int, int, int, int, int]:
    """One (family, seed, metric) of the demo: (family, seed, anomalies found, anomalies, false
    alarms, rows scored for false alarms)."""
    import torch

    torch.set_num_threads(1)  # small networks: one thread each, a process per core
    family, seed, metric = job
    telemetry, first = demo.demo_telemetry(presets.UP_ROWS, seed, presets.UP_METRICS)
    found, false, _ = demo.score_metric(presets.model_config(family), telemetry, metric, first)
    return family, seed, sum(f.detected for f in found), len(found), len(false), presets.UP_ROWS - first


def demo_runs(names: list[str], seeds: list[int], workers: int) -> dict[tuple[str, int], tuple[int, int, float]]:
    """``eyenet demo``'s telemetry of each seed scored by each family: (found, anomalies, false
    alarms per 1,000 scored points) per (family, seed)."""
    jobs = [(f, s, m) for f in names for s in seeds for m in presets.UP_METRICS]
    totals: dict[tuple[str, int], list[int]] = {}
    with ProcessPoolExecutor(max_workers=max(workers, 1)) as pool:
        for family, seed, *counts in pool.map(_demo_metric, jobs):
            t = totals.setdefault((family, seed), [0, 0, 0, 0])
            for i, c in enumerate(counts):
                t[i] += c
    return {k: (hit, n, 1000.0 * false / max(scored, 1)) for k, (hit, n, false, scored) in totals.items()}


def demo_table(runs: dict[tuple[str, int], tuple[int, int, float]], names: list[str], seeds: list[int]) -> str:
    out = ["| detector | " + " | ".join(f"seed {s}: found, false alarms / 1,000" for s in seeds) + " |",
           "|---|" + "---:|" * len(seeds)]
    for f in names:
        out.append(f"| {f} | " + " | ".join("{} / {} at {:.2f}".format(*runs[f, s]) for s in seeds) + " |")
    if "ensemble" in names:  # the target: the ensemble finds as many as any single family, with no more false alarms
        out.append("")
        for s in seeds:
            hit, _, fa = runs["ensemble", s]
            better = [f for f in names if f != "ensemble" and (runs[f, s][0] > hit or runs[f, s][0] == hit and runs[f, s][2] < fa)]
            out.append(f"seed {s}: families ahead of the ensemble (more found, or as many with fewer false alarms): "
                       f"{', '.join(better) or 'none'}")
    return "\n".join(out)


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


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be non-negative integers separated by commas, got {text!r}")
    return seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    unsupervised = [f for f in detectors.available() if not detectors.create(f).supervised]
    ap.add_argument("--detectors", default=",".join(unsupervised),
                    help="families to score (default: every one that learns without labels; NAB's probation "
                         "rows, which a model learns from, hold no labelled anomalies)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--loco", action="store_true", help="leave one category out over the candidate ensembles")
    ap.add_argument("--demo", metavar="SEEDS", type=_seeds,
                    help="score eyenet demo's telemetry of these seeds (e.g. 7,0,1), not NAB")
    args = ap.parse_args()
    names = [n for n in args.detectors.split(",") if n]
    try:  # an unknown family fails here, before any work
        for name in names:
            presets.model_config(name)
    except EyenetError as exc:
        raise SystemExit(f"bench.quality: {exc}") from None
    if args.demo:
        seeds = args.demo
        t0 = time.perf_counter()
        runs = demo_runs(names, seeds, args.workers)
        print(f"{len(names)} detectors x {len(seeds)} seeds in {time.perf_counter() - t0:.0f}s\n")
        print(demo_table(runs, names, seeds))
        return
    if not (args.corpus / "data").is_dir():
        raise SystemExit(f"bench.quality: no NAB corpus at {args.corpus}")
    if args.loco:
        rows, reports = loco(args.corpus, args.workers)
        print()
        print("| candidate | standard | low FP | low FN | standard @own |\n|---|---:|---:|---:|---:|")
        for name, rep in reports.items():
            p = rep.profiles
            print(f"| {name} | {p['standard'].score:.1f} | {p['reward_low_fp'].score:.1f} | "
                  f"{p['reward_low_fn'].score:.1f} | {p['standard'].own_score:.1f} |")
        print()
        print(loco_table(rows))
        return
    rows = run(args.corpus, names, args.workers)
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
