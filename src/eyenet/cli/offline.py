"""``eyenet score``, ``evaluate`` and ``detectors``: offline work on files and corpora, no Ray, no server."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from eyenet.cli.arguments import parse_params
from eyenet.cli.demo import torch_threads
from eyenet.cli.output import info, table
from eyenet.core import presets
from eyenet.core.errors import InvalidParameterError, NotEnoughDataError

# ----------------------------------------------------------------------------------------------
# eyenet score


def cmd_score(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if args.corpus is not None:
        if args.out is None:
            parser.error("--corpus needs --out RESULTS")
        if args.train_rows is not None or args.train_fraction is not None:
            parser.error("--train-rows/--train-fraction apply to --input only (a corpus trains on its probation period)")
    elif args.name is not None or args.workers is not None:
        parser.error("--name and --workers apply to --corpus only")
    config = presets.model_config(args.detector, parse_params(args.params))
    with torch_threads(1, [config]):
        if args.corpus is not None:
            return _score_corpus(args, config)
        return _score_input(args, config)


def _score_corpus(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from eyenet.core.scoring import write_corpus_results

    label = args.name or args.detector
    t0 = time.perf_counter()
    results = write_corpus_results(
        args.corpus, config, args.out, label, workers=args.workers, progress=lambda m: info(f"score: {m}")
    )
    secs = time.perf_counter() - t0
    rows = sum(r.rows for r in results)
    print(
        f"scored {len(results)} files ({rows:,} rows) with {args.detector} as {label!r} in {secs:.1f} s; "
        f"results in {Path(args.out) / label}"
    )
    print(f"next: eyenet evaluate --corpus {args.corpus} --results {args.out} --name {label}")
    return 0


def _train_rows(n: int, args: argparse.Namespace) -> int:
    from eyenet.core import nab

    if args.train_rows is not None:
        if args.train_rows > n:
            raise InvalidParameterError(f"--train-rows {args.train_rows} is more than the series' {n} rows")
        return args.train_rows
    if args.train_fraction is not None:
        return max(1, int(math.floor(args.train_fraction * n)))
    return nab.probation_length(n)


def _score_input(args: argparse.Namespace, config: dict[str, Any]) -> int:
    import pandas as pd

    from eyenet.core.data import read_series
    from eyenet.core.model import AnomalyModel

    series = read_series(args.input)
    n = len(series)
    k = _train_rows(n, args)
    model = AnomalyModel.from_dict(config)
    try:
        model.fit(series.values[:k])
    except NotEnoughDataError as exc:
        raise NotEnoughDataError(
            f"{args.input}: {exc} (training on the first {k} of {n} rows; set --train-rows or --train-fraction)"
        ) from None
    out = model.score(series.values)
    frame = pd.DataFrame(
        {
            "timestamp": series.timestamps,
            "value": series.values,
            "raw": out.raw,
            "calibrated": out.calibrated,
            "score": out.score,
            "alarm": out.alarm.astype(int),
        }
    )
    summary = (
        f"scored {n:,} rows of {args.input} with {args.detector} (trained on the first {k:,}): "
        f"{int(out.ready.sum()):,} ready, {int(out.alarm.sum()):,} alarm(s)"
    )
    if args.out is None:
        frame.to_csv(sys.stdout, index=False, lineterminator="\n")
        info(summary)
    else:
        out_path = Path(args.out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out_path, index=False, lineterminator="\n")
        print(f"{summary}; wrote {out_path}")
    return 0


# ----------------------------------------------------------------------------------------------
# eyenet evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    from eyenet.core.evaluation import evaluate_corpus

    threshold = presets.alarm_threshold() if args.threshold is None else args.threshold
    report = evaluate_corpus(args.corpus, args.results, args.name, own_threshold=threshold)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(report.table())
    if args.files:
        print()
        print(report.files_table())
    return 0


# ----------------------------------------------------------------------------------------------
# eyenet detectors


def cmd_detectors(args: argparse.Namespace) -> int:
    from eyenet.core import detectors

    names = detectors.available()
    if not names:
        print("no detector families are registered")
        return 0
    width = max(len(n) for n in names)
    for name in names:
        cls = detectors.get_class(name)
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        params = cls().get_params()
        print(f"{name.ljust(width)}  {doc[0] if doc else ''}".rstrip())
        text = " ".join(f"{k}={json.dumps(v)}" for k, v in params.items())
        print(f"{''.ljust(width)}  {text}")
    return 0




# ----------------------------------------------------------------------------------------------
# eyenet bench


def cmd_bench(args: argparse.Namespace) -> int:
    from eyenet.core import synthetic, timing
    from eyenet.core.model import AnomalyModel

    families = args.detectors or ["ensemble", *_members(presets.model_config("ensemble"))]
    configs = {f: presets.model_config(f) for f in families}  # unknown names fail before any work
    _, values, _ = synthetic.series("cpu_pct", n=3000, seed=1, anomalies_per_metric=0)
    train, history, live = values[:1500], values[1500:2500], values[2500:]
    results = []
    with torch_threads(1, list(configs.values())):
        for family, config in configs.items():
            info(f"bench: {family} ...")
            model = AnomalyModel.from_dict(config).fit(train)
            for t in (timing.stream_step(model, history, live, args.calls),
                      timing.window(model, values, args.window, max(10, args.calls // 10))):
                results.append({"model": family, **t.to_dict()})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    rows = [(r["model"], r["what"], f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['points_per_s']:,.0f}")
            for r in results]
    print("\n".join(table(("model", "request", "p50 ms", "p99 ms", "points/s"), rows, right=(2, 3, 4))))
    return 0


def _members(config: dict[str, Any]) -> list[str]:
    members = ((config.get("detector") or {}).get("params") or {}).get("members") or []
    return [m["family"] for m in members if isinstance(m, dict) and "family" in m]
