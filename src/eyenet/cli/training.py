"""``eyenet train`` and ``eyenet tune``: training and tuning from the command line (``eyenet models``: :mod:`eyenet.cli.models`).

Parsers are added by :func:`add_parsers`; errors propagate to :func:`eyenet.cli.main`,
which turns them into one line and an exit code.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from eyenet.cli.arguments import positive_int
from eyenet.cli.output import info
from eyenet.core import presets
from eyenet.core.detectors import TORCH_FAMILIES
from eyenet.core.errors import InvalidParameterError, NotEnoughDataError
from eyenet.core.redact import redact

#: `eyenet train` without --input: the anomaly-free head of this synthetic metric
DEFAULT_TRAIN_METRIC = "cpu_pct"
#: `eyenet train --prometheus`: the default range, one week at one minute (10,081 points, under
#: Prometheus' 11,000 per series)
PROMETHEUS_RANGE = {"start": "now-7d", "end": "now", "step": "1m"}


def add_parsers(sub: Any) -> None:
    train = sub.add_parser(
        "train",
        help="train detectors (Ray Train for torch families, Ray tasks otherwise) and register them in MLflow",
        description=(
            "Train detector models and register each as a new version (alias 'challenger') in the MLflow "
            "registry (embedded SQLite store under .eyenet/, or EYENET_MLFLOW_URI). Torch families train "
            "on Ray Train (--workers data-parallel workers, --gpu to use GPUs); the others, and every family "
            "when the input holds several series, train as parallel Ray tasks, one model per series. "
            "With --prometheus, trains on the series --query returns over --start..--end at --step "
            "(query_range; a bearer token from EYENET_PROMETHEUS_TOKEN when set). "
            "Without --input, --corpus or --prometheus, trains on the anomaly-free start of the synthetic telemetry. "
            "An interrupted Ray Train run resumes from its last checkpoint when the same command runs again."
        ),
    )
    train.add_argument("--detector", default="all", metavar="NAMES",
                       help="comma-separated families, or 'all' (the default suite and the ensemble)")
    train.add_argument("--params", metavar="JSON", help="parameters for a single --detector, as a JSON object")
    data = train.add_mutually_exclusive_group()
    data.add_argument("--input", metavar="FILE",
                      help=".csv or .parquet file or URI (s3://...) with timestamp,value (and optionally series) columns")
    data.add_argument("--corpus", type=Path, metavar="DIR", help="NAB-format corpus: one model per file, on its probation rows")
    data.add_argument("--prometheus", metavar="URL", help="Prometheus server to read --query from: one model per series")
    train.add_argument("--query", metavar="PROMQL", help="--prometheus: the PromQL expression")
    train.add_argument("--start", metavar="TIME", help="--prometheus: RFC 3339, Unix seconds or now-<duration> "
                       f"(default: {PROMETHEUS_RANGE['start']})")
    train.add_argument("--end", metavar="TIME", help=f"--prometheus: as --start (default: {PROMETHEUS_RANGE['end']})")
    train.add_argument("--step", metavar="DURATION", help=f"--prometheus: 15s, 1m, ... (default: {PROMETHEUS_RANGE['step']})")
    train.add_argument("--group", default=None, metavar="NAME", help="series group in the model name (default: the series name)")
    train.add_argument("--tenant", default="default", metavar="NAME")
    labelled = train.add_mutually_exclusive_group()
    labelled.add_argument("--labels", metavar="COLUMN",
                          help="--input: its column of labels (1 anomaly, 0 normal, empty unknown). The model is fitted "
                          "with and without a supervised classifier member on the first 70%% of the rows, and the "
                          "deployment gate, judging both on the rest, decides whether the member is kept")
    labelled.add_argument("--feedback", nargs="?", const="", metavar="FILE",
                          help="as --labels, from operators' feedback (POST /v1/feedback) on the series --series: "
                          "true_anomaly and missed_anomaly points are anomalies, false_alarm and unlabelled points "
                          "normal (default FILE: .eyenet/feedback.jsonl)")
    train.add_argument("--series", metavar="ID", help="--feedback: the series id the feedback names "
                       "(default: the input series' name)")
    train.add_argument("--workers", type=positive_int, default=1, metavar="N", help="Ray Train workers per torch model")
    train.add_argument("--gpu", action="store_true", help="Ray Train workers use one GPU each")
    train.add_argument("--address", metavar="ADDR", help="existing Ray cluster ('auto' or ray://host:10001)")
    train.set_defaults(func=cmd_train)

    tune = sub.add_parser(
        "tune",
        help="search a detector's hyper-parameters with Ray Tune (ASHA + Optuna) and register the best",
        description=(
            "Search a family's parameters and its calibration / alarm settings with Ray Tune (Optuna "
            "search, ASHA early stopping). The objective is the NAB standard score on labelled validation "
            "series: a NAB-format --corpus, the synthetic telemetry (default), or an unlabelled --input with "
            "anomalies planted in its tail. Every trial is logged to MLflow; the best configuration is "
            "retrained on the training series and registered as 'challenger'."
        ),
    )
    tune.add_argument("--detector", required=True, metavar="NAME")
    tune.add_argument("--trials", type=positive_int, default=16, metavar="N")
    tune.add_argument("--space", type=Path, metavar="FILE",
                      help='JSON search space, e.g. {"window": {"choice": [16, 32]}, "lr": {"loguniform": [1e-4, 1e-2]}}')
    vdata = tune.add_mutually_exclusive_group()
    vdata.add_argument("--corpus", type=Path, metavar="DIR", help="labelled NAB-format corpus for validation")
    vdata.add_argument("--input", type=Path, metavar="FILE", help="unlabelled series: anomalies are planted in its tail")
    tune.add_argument("--every", type=positive_int, default=1, metavar="K", help="--corpus: use every K-th file")
    tune.add_argument("--train", type=Path, metavar="FILE", help="series to retrain the best configuration on "
                      "(default: --input, else the synthetic training series)")
    tune.add_argument("--group", default="default", metavar="NAME")
    tune.add_argument("--tenant", default="default", metavar="NAME")
    tune.add_argument("--concurrent", type=positive_int, default=2, metavar="N", help="trials running at once")
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--address", metavar="ADDR", help="existing Ray cluster ('auto' or ray://host:10001)")
    tune.set_defaults(func=cmd_tune)


# ----------------------------------------------------------------------------------------------
# shared


def _families(text: str) -> list[str]:
    from eyenet.core import detectors

    if text == "all":
        return [*presets.DEFAULT_SUITE, "ensemble"]
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise InvalidParameterError("--detector: expected a family name, a comma-separated list, or 'all'")
    for n in names:
        detectors.get_class(n)  # UnknownNameError names the family and lists the known ones
    return names


def default_series() -> Any:
    """The anomaly-free start of the synthetic telemetry `eyenet up` and `eyenet train` use by default."""
    from eyenet.lifecycle import jobs

    return jobs.synthetic_series(DEFAULT_TRAIN_METRIC)


def _read_input(path: Path) -> list[Any]:
    """Local files are read and checked here, before Ray starts; URIs (s3://, gs://) through Ray Data."""
    from eyenet.core import data
    from eyenet.train import data as train_data

    if train_data.is_remote(path):
        return train_data.read_series(str(path))
    return data.read_many(path)


def _read_prometheus(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    """The series of ``--query`` from ``--prometheus`` (read before Ray starts) and their source
    record, with the range resolved to Unix seconds."""
    from eyenet.core import prometheus
    from eyenet.lifecycle import holdout

    if not args.query:
        raise InvalidParameterError("--prometheus needs --query PROMQL")
    given = {k: getattr(args, k) or v for k, v in PROMETHEUS_RANGE.items()}
    now = time.time()
    start = prometheus.parse_time(given["start"], now=now, what="--start")
    end = prometheus.parse_time(given["end"], now=now, what="--end")
    step = prometheus.parse_duration(given["step"], what="--step")
    result = prometheus.query_range(args.prometheus, args.query, start=start, end=end, step=step,
                                    headers=prometheus.token_headers())
    if not result:
        raise NotEnoughDataError(f"{args.query!r} returned no series from {given['start']} to {given['end']} "
                                 f"at Prometheus {redact(args.prometheus)}")
    series = prometheus.to_series(result)
    _check_distinct_groups(series)
    return series, holdout.prometheus_source(args.prometheus, args.query, start, end, step)


def _check_distinct_groups(series: list[Any]) -> None:
    """Every series must get a model group of its own (the group is the series name, slugged)."""
    from eyenet.lifecycle import registry

    seen: dict[str, str] = {}
    for s in series:
        group = registry.slug(s.name)
        if group in seen:
            raise InvalidParameterError(
                f"series {seen[group]} and {s.name} would both be model group {group!r} (a group is 63 "
                "characters of a-z, 0-9, '_' or '-'); narrow --query or aggregate it with sum by (...)")
        seen[group] = s.name


def _registry() -> Any:
    from eyenet.lifecycle import registry

    return registry.Registry().check()


def _epoch_printer(label: str) -> Callable[[dict[str, Any]], None]:
    def on_epoch(rec: dict[str, Any]) -> None:
        info(f"  {label}: epoch {rec['epoch']} train_loss={rec['train_loss']:.4g} val_loss={rec['val_loss']:.4g}")

    return on_epoch


# ----------------------------------------------------------------------------------------------
# eyenet train


def cmd_train(args: argparse.Namespace) -> int:
    from eyenet.cli import cluster
    from eyenet.cli.arguments import parse_params
    from eyenet.lifecycle import holdout, registry

    families = _families(args.detector)
    params = parse_params(args.params)
    if params and len(families) != 1:
        raise InvalidParameterError("--params applies to a single --detector")
    configs = {f: presets.model_config(f, params if params else None) for f in families}
    if args.prometheus is None and any(getattr(args, k) for k in ("query", *PROMETHEUS_RANGE)):
        raise InvalidParameterError("--query, --start, --end and --step read from --prometheus URL")
    if args.prometheus is not None:
        series, source = _read_prometheus(args)
    elif args.corpus is not None:
        from eyenet.train import data as train_data

        series = train_data.read_corpus(args.corpus)
        source = holdout.corpus_source(args.corpus)
    elif args.input is not None:
        if "://" in str(args.input):  # remote storage: Ray Data reads it on the cluster
            cluster.connect(args.address)
        series = _read_input(args.input)
        source = holdout.input_source(args.input)
    else:
        series = [default_series()]
        source = holdout.synthetic_source(DEFAULT_TRAIN_METRIC)
    if args.group is not None:
        registry.model_name("x", group=args.group, tenant=args.tenant)
        if len(series) > 1:
            raise InvalidParameterError(f"--group names one series group, but the input holds {len(series)} series")
    labels = _labels(args, families, series)
    reg = _registry()
    info(f"MLflow: {redact(reg.uri)}")
    cluster.connect(args.address)
    from eyenet.train import trainer

    if labels is not None:
        return _train_labelled(args, configs[families[0]], series[0], labels, reg, source)
    rows = []
    for family in families:
        t0 = time.perf_counter()
        if len(series) == 1 and family in TORCH_FAMILIES + ("ensemble",):
            s = series[0]
            group = args.group or registry.slug(s.name)
            info(f"{family}: Ray Train, {args.workers} worker(s), {len(s)} rows of {s.name}")
            result = trainer.train_torch(configs[family], s, registry=reg, group=group, tenant=args.tenant,
                                         num_workers=args.workers, use_gpu=args.gpu,
                                         on_epoch=_epoch_printer(family), source=source)
            results = [result]
        else:
            info(f"{family}: Ray tasks over {len(series)} series")
            if args.group is not None:
                series = [type(s)(args.group, s.timestamps, s.values) for s in series]
            results = trainer.train_many(configs[family], series, registry=reg, tenant=args.tenant, progress=info,
                                         source=source)
        seconds = time.perf_counter() - t0
        for r in results:
            v = r.version
            resumed = max((run["resumed_from"] for run in r.runs), default=0)
            note = f", resumed from epoch {resumed}" if resumed else ""
            info(f"{family}: registered {v.name} version {v.version} as challenger ({seconds:.1f}s{note})")
            rows.append((v.name, str(v.version), ",".join(v.aliases), f"{r.metrics.get('fit_seconds', 0):.1f}"))
    from eyenet.cli.output import table

    print("\n".join(table(("model", "version", "aliases", "fit s"), rows, right=(1, 3))))
    return 0


def _labels(args: argparse.Namespace, families: list[str], series: list[Any]) -> np.ndarray | None:
    """The labels of ``--labels`` or ``--feedback`` for the one input series, checked before Ray starts."""
    from eyenet.core import data
    from eyenet.lifecycle import supervised

    if args.labels is None and args.feedback is None:
        if args.series is not None:
            raise InvalidParameterError("--series names the series of --feedback")
        return None
    flag = "--labels" if args.labels is not None else "--feedback"
    if len(families) != 1 or len(series) != 1:
        raise InvalidParameterError(f"{flag} trains one --detector on one series; got {len(families)} families "
                                    f"and {len(series)} series")
    s = series[0]
    if args.labels is not None:
        if args.input is None or "://" in str(args.input):
            raise InvalidParameterError("--labels names a column of a local --input file")
        ts, column = data.read_column(args.input, args.labels)
        labels = supervised.labels_from_column(ts, column, s.timestamps, f"{args.input}: column {args.labels!r}")
    else:
        from eyenet.monitoring import feedback

        path = Path(args.feedback) if args.feedback else feedback.default_path()
        if not path.is_file():
            raise InvalidParameterError(f"--feedback: no feedback file at {path}")
        got = supervised.labels_from_feedback(feedback.read(path), s.timestamps, series=args.series or s.name)
        info(f"feedback: {got.matched} labelled points of {args.series or s.name} matched, {got.unmatched} did not "
             f"match a timestamp of the input")
        labels = got.labels
    supervised.split_row(len(labels), labels)  # both parts hold an anomaly, or say so now
    return labels


def _train_labelled(args: argparse.Namespace, config: dict[str, Any], s: Any, labels: np.ndarray, reg: Any,
                    source: dict[str, Any]) -> int:
    from eyenet.lifecycle import registry
    from eyenet.train import trainer

    n = int(np.count_nonzero(labels == 1))
    info(f"{config['detector']['family']}: with and without a classifier member, {len(s)} rows of {s.name}, "
         f"{n} labelled anomalous")
    t0 = time.perf_counter()
    r, tags = trainer.train_labelled(config, s, labels, registry=reg, group=args.group or registry.slug(s.name),
                                     tenant=args.tenant, source=source)
    v = r.version
    print(f"classifier member {tags['eyenet.supervised']}: {tags['eyenet.supervised.reason']}")
    print(f"registered {v.name} version {v.version} as challenger ({time.perf_counter() - t0:.1f}s)")
    return 0


# ----------------------------------------------------------------------------------------------
# eyenet tune


def cmd_tune(args: argparse.Namespace) -> int:
    from eyenet.cli import cluster
    from eyenet.core import detectors
    from eyenet.lifecycle import holdout, tuning

    detectors.get_class(args.detector)
    space = None
    if args.space is not None:
        try:
            space = json.loads(Path(args.space).read_text())
        except json.JSONDecodeError as exc:
            raise InvalidParameterError(f"{args.space}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        tuning.check_space(args.detector, space)
    if args.corpus is not None:
        validation = tuning.from_corpus(args.corpus, every=args.every)
        kind = f"{len(validation)} labelled series of {args.corpus}"
    elif args.input is not None:
        validation = [tuning.with_injected(s.name, np.asarray(s.values), seed=args.seed) for s in _read_input(args.input)]
        kind = f"{len(validation)} series of {args.input} with planted anomalies"
    else:
        validation = tuning.from_synthetic()
        kind = f"{len(validation)} labelled synthetic series"
    if args.train is not None:
        train_series, source = _read_input(args.train)[0], holdout.input_source(args.train)
    elif args.input is not None:
        train_series, source = _read_input(args.input)[0], holdout.input_source(args.input)
    else:
        train_series, source = default_series(), holdout.synthetic_source(DEFAULT_TRAIN_METRIC)
    reg = _registry()
    info(f"MLflow: {redact(reg.uri)}; validating on {kind}; {args.trials} trials")
    cluster.connect(args.address)
    from eyenet.tune import tuner

    t0 = time.perf_counter()
    result = tuner.search_and_register(
        args.detector, validation, train_series, registry=reg, group=args.group, tenant=args.tenant,
        trials=args.trials, space=space, max_concurrent=args.concurrent, seed=args.seed, progress=info,
        source=source,
    )
    v = result.version
    print(f"{args.detector}: {result.trials} trials ({result.stopped_early} stopped early by ASHA) "
          f"in {time.perf_counter() - t0:.0f}s")
    print(f"  NAB standard on validation: best {result.best_score:.1f}, default configuration {result.default_score:.1f}")
    print(f"  best: {json.dumps(result.best_sample, default=float)}")
    print(f"  registered {v.name} version {v.version} as challenger")
    return 0
