"""The ``eyenet`` command line.

Subcommands parse arguments and print; the work is done by the library
(:mod:`eyenet.core.scoring`, :mod:`eyenet.core.evaluation`, :mod:`eyenet.core.model`,
:mod:`eyenet.core.synthetic`), with default configurations from :mod:`eyenet.core.presets`.
Errors of the :class:`~eyenet.core.errors.EyenetError` family, unreadable files and
Ctrl-C are turned into one ``eyenet: error: ...`` line and an exit code in
:func:`main` only.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

import numpy as np

from eyenet import __version__
from eyenet.core import presets
from eyenet.core.errors import EyenetError, InvalidParameterError, NotEnoughDataError, exit_code_for

PROG = "eyenet"
#: subcommands registered now, implemented with the serving / registry work
PENDING = {
    "bench": "run the benchmarks",
}


# ----------------------------------------------------------------------------------------------
# argument parsing


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {v}")
    return v


def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if math.isnan(v):
        raise argparse.ArgumentTypeError("expected a number, got NaN")
    return v


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Anomaly detection for operational time series.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    up = sub.add_parser(
        "demo",
        help="offline: train the default detectors on synthetic telemetry and report what each flags",
        description=(
            "Generate seeded synthetic telemetry (seven days at five-minute resolution with "
            "injected anomalies), train every default detector family and the ensemble on the "
            "anomaly-free start of each metric, score the rest causally and report, per detector, "
            "which anomalies it flagged, its false alarms, and a summary table. No Ray, no server."
        ),
    )
    up.add_argument("--rows", type=_positive_int, default=presets.UP_ROWS, help=argparse.SUPPRESS)
    up.add_argument("--detectors", type=_names, default=None, help=argparse.SUPPRESS)
    up.add_argument("--metrics", type=_names, default=None, help=argparse.SUPPRESS)
    up.add_argument("--seed", type=int, default=presets.UP_SEED, help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_demo)

    score = sub.add_parser(
        "score",
        help="score a NAB-format corpus or a single series",
        description=(
            "With --corpus: score every file of a NAB-format corpus as a stream (learning from its "
            "probation period) and write OUT/LABEL/<category>/LABEL_<file>.csv with columns "
            "timestamp,value,anomaly_score. With --input: fit on the first rows of one series "
            "(.csv or .parquet with columns timestamp,value), score every row causally and write "
            "timestamp,value,raw,calibrated,score,alarm (to --out, or stdout)."
        ),
    )
    src = score.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", type=Path, metavar="DIR", help="NAB-format corpus (data/ and labels/)")
    src.add_argument("--input", type=Path, metavar="FILE", help="one series, .csv or .parquet")
    score.add_argument("--detector", required=True, metavar="NAME", help="detector family (see 'eyenet detectors')")
    score.add_argument("--params", metavar="JSON", help="detector parameters as a JSON object, e.g. '{\"window\": 32}'")
    score.add_argument("--name", metavar="LABEL", help="result label for --corpus (default: the detector name)")
    score.add_argument("--out", type=Path, metavar="PATH", help="results directory (--corpus) or CSV file (--input)")
    score.add_argument("--workers", type=_positive_int, metavar="N", help="processes for --corpus (default: CPU count)")
    train = score.add_mutually_exclusive_group()
    train.add_argument("--train-rows", type=_positive_int, metavar="N", help="--input: fit on the first N rows")
    train.add_argument(
        "--train-fraction", type=_fraction, metavar="F",
        help="--input: fit on the first fraction F of the rows (default: 15%%, at most 750 rows, as NAB)",
    )
    score.set_defaults(func=cmd_score, parser=score)

    ev = sub.add_parser(
        "evaluate",
        help="NAB scores of a result set (standard, reward-low-FP, reward-low-FN)",
        description=(
            "Score the result files RESULTS/LABEL/... of a corpus run with the NAB rules and print "
            "the three profiles at the optimised threshold and at the detector's own threshold."
        ),
    )
    ev.add_argument("--corpus", type=Path, required=True, metavar="DIR")
    ev.add_argument("--results", type=Path, required=True, metavar="RESULTS")
    ev.add_argument("--name", required=True, metavar="LABEL")
    ev.add_argument(
        "--threshold", type=_number, metavar="T", default=None,
        help="the detector's own alarm threshold (default: the default model's alarm threshold)",
    )
    ev.add_argument("--files", action="store_true", help="also print per-file counts")
    ev.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    ev.set_defaults(func=cmd_evaluate)

    det = sub.add_parser("detectors", help="list the registered detector families and their default parameters")
    det.set_defaults(func=cmd_detectors)

    from eyenet.cli import models as cli_models, local as cli_serve, training as cli_train

    cli_train.add_parsers(sub)
    cli_models.add_parsers(sub)
    cli_serve.add_parsers(sub)

    for name, text in PENDING.items():
        p = sub.add_parser(name, help=f"{text} (not available yet)", description=f"{text} (not available yet)")
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(func=cmd_pending)
    return parser


# ----------------------------------------------------------------------------------------------
# main: the one place where errors become messages and exit codes


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``eyenet`` command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except EyenetError as exc:
        _error(str(exc))
        return exit_code_for(exc)
    except OSError as exc:
        what = f"{exc.strerror or type(exc).__name__}: {exc.filename}" if exc.filename else str(exc)
        _error(what)
        return 1


def _error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


def _info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parse_params(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParameterError(f"--params: not valid JSON ({exc.msg}, character {exc.pos}): {text!r}") from None
    if not isinstance(params, dict):
        raise InvalidParameterError(
            f"--params: expected a JSON object such as '{{\"window\": 32}}', got {type(params).__name__}"
        )
    return params


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
    config = presets.model_config(args.detector, _parse_params(args.params))
    with _torch_threads(1, [config]):
        if args.corpus is not None:
            return _score_corpus(args, config)
        return _score_input(args, config)


def _score_corpus(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from eyenet.core.scoring import write_corpus_results

    label = args.name or args.detector
    t0 = time.perf_counter()
    results = write_corpus_results(
        args.corpus, config, args.out, label, workers=args.workers, progress=lambda m: _info(f"score: {m}")
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
        _info(summary)
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
# subcommands that arrive later


def cmd_pending(args: argparse.Namespace) -> int:
    print(f"{PROG} {args.command}: not available yet (arrives with the serving/registry work)", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------------------------
# eyenet demo


@dataclass(frozen=True)
class Flagged:
    """One injected anomaly of a metric and whether the detector's alarms caught it."""

    metric: str
    kind: str
    start: int
    end: int  # exclusive
    detected: bool
    delay: int | None  # rows from the anomaly's first row to the first alarm


def match_alarms(
    alarms: np.ndarray, anomalies: Sequence[Any], *, first_row: int, tolerance: int, metric: str = ""
) -> tuple[list[Flagged], np.ndarray]:
    """Match alarm rows to injected anomalies ``(kind, start, end)``.

    An anomaly is detected by an alarm in rows ``start .. end - 1 + tolerance``;
    the delay is the first such row minus ``start``. Alarms from ``first_row`` on
    outside every such span are false alarms; their rows are returned.
    """
    a = np.asarray(alarms, dtype=bool)
    covered = np.zeros(len(a), dtype=bool)
    out = []
    for an in anomalies:
        hi = min(an.end + tolerance, len(a))
        covered[an.start : hi] = True
        hits = np.flatnonzero(a[an.start : hi])
        out.append(
            Flagged(metric, an.kind, an.start, an.end, bool(len(hits)), int(hits[0]) if len(hits) else None)
        )
    scored = np.arange(len(a)) >= first_row
    return out, np.flatnonzero(a & ~covered & scored)


def _load_families(config: dict[str, Any]) -> None:
    """Import the detector classes a model config names, an ensemble's members included."""
    from eyenet.core import detectors

    det = config.get("detector") or {}
    members = (det.get("params") or {}).get("members") or []
    for name in [det.get("family"), *(m.get("family") for m in members if isinstance(m, dict))]:
        if isinstance(name, str):
            detectors.get_class(name)


@contextlib.contextmanager
def _torch_threads(n: int, configs: Sequence[dict[str, Any]]) -> Iterator[None]:
    """Run with ``n`` torch threads when a config needs torch, restoring the count afterwards.

    The networks are small: one thread trains them faster than two, and far
    more steadily when the cores are busy.
    """
    for config in configs:
        _load_families(config)
    torch = sys.modules.get("torch")
    if torch is None:  # no torch family involved: do not import it
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Progress:
    """Training progress on stderr: a live line on a terminal, one line per model otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.label = ""

    def start(self, label: str) -> None:
        self.label = label
        if self.live:
            self._write(f"[{self.done + 1}/{self.total}] {label} ...")

    def epoch(self, max_epochs: int | None) -> Callable[[dict[str, Any]], None]:
        def on_epoch(record: dict[str, Any]) -> None:
            if self.live:
                of = f"/{max_epochs}" if max_epochs else ""
                self._write(
                    f"[{self.done + 1}/{self.total}] {self.label}: epoch {record['epoch']}{of}, "
                    f"val loss {record['val_loss']:.4g}"
                )

        return on_epoch

    def finish(self, detail: str) -> None:
        self.done += 1
        line = f"[{self.done}/{self.total}] {self.label}: {detail}"
        if self.live:
            self._write(line)
            self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _write(self, text: str) -> None:
        self.stream.write("\r\033[K" + text)
        self.stream.flush()


def cmd_demo(args: argparse.Namespace) -> int:
    from eyenet.core import synthetic
    from eyenet.core.model import AnomalyModel

    families = args.detectors or [*presets.DEFAULT_SUITE, "ensemble"]
    configs = {f: presets.model_config(f) for f in families}  # unknown names fail here, before any work
    metrics = args.metrics or presets.UP_METRICS
    telemetry = synthetic.generate(
        n=args.rows,
        metrics=metrics,
        seed=args.seed,
        anomalies_per_metric=presets.UP_ANOMALIES_PER_METRIC,
        anomaly_free_prefix=presets.UP_TRAIN_FRACTION,
    )
    first = int(math.ceil(presets.UP_TRAIN_FRACTION * args.rows))
    step = telemetry.frame["timestamp"].iloc[1] - telemetry.frame["timestamp"].iloc[0]
    n_anomalies = sum(len(v) for v in telemetry.anomalies.values())
    print(
        f"eyenet demo: offline run on synthetic telemetry\n"
        f"  {args.rows:,} rows every {_duration(step)} ({_duration(step * args.rows)}), seed {args.seed}, "
        f"metrics: {', '.join(metrics)}\n"
        f"  {n_anomalies} injected anomalies after row {first}; each detector trains on rows 0..{first - 1} "
        f"(anomaly-free) and scores every row causally\n"
        f"  an anomaly counts as detected by an alarm inside it or up to {presets.UP_TOLERANCE} rows after it; "
        f"other alarms from row {first} on are false alarms\n",
        flush=True,
    )
    progress = _Progress(len(families) * len(metrics))
    scored_rows = (args.rows - first) * len(metrics)
    summary = []
    with _torch_threads(1, list(configs.values())):
        for family in families:
            flagged: list[Flagged] = []
            false_rows: dict[str, np.ndarray] = {}
            fit_seconds = 0.0
            for metric in metrics:
                x = telemetry.frame[metric].to_numpy()
                model = AnomalyModel.from_dict(configs[family])
                det = model.detector
                progress.start(f"{family} on {metric}")
                if hasattr(type(det), "on_epoch"):  # torch families report each epoch
                    det.on_epoch = progress.epoch(getattr(det, "max_epochs", None))
                t0 = time.perf_counter()
                model.fit(x[:first])
                secs = time.perf_counter() - t0
                fit_seconds += secs
                out = model.score(x)
                epochs = getattr(det, "history_", None)
                progress.finish(f"fit {secs:.1f} s" + (f", {len(epochs)} epochs" if epochs else ""))
                found, false = match_alarms(
                    out.alarm, telemetry.anomalies[metric], first_row=first, tolerance=presets.UP_TOLERANCE, metric=metric
                )
                flagged.extend(found)
                false_rows[metric] = false
            print(_detector_report(family, flagged, false_rows, fit_seconds), flush=True)
            n_false = sum(len(v) for v in false_rows.values())
            summary.append(
                (family, sum(f.detected for f in flagged), len(flagged), 1000.0 * n_false / max(scored_rows, 1), fit_seconds)
            )
    print(_summary_table(summary, scored_rows))
    return 0


def _duration(td: Any) -> str:
    secs = float(td.total_seconds())
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if secs >= size:
            return f"{round(secs / size, 1):g} {unit}"
    return f"{secs:g} s"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "", right: Sequence[int] = ()) -> list[str]:
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]

    def line(r: Sequence[str]) -> str:
        cells = [r[c].rjust(widths[c]) if c in right else r[c].ljust(widths[c]) for c in range(len(r))]
        return (indent + "  ".join(cells)).rstrip()

    return [line(head), indent + "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def _rows_text(rows: np.ndarray, limit: int = 6) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f", ... ({len(rows) - limit} more)" if len(rows) > limit else "")


def _detector_report(family: str, flagged: list[Flagged], false_rows: dict[str, np.ndarray], fit_seconds: float) -> str:
    hits = sum(f.detected for f in flagged)
    lines = [f"== {family}: detected {hits}/{len(flagged)} injected anomalies (fit {fit_seconds:.1f} s)"]
    rows = [
        (
            f.metric,
            f.kind,
            f"{f.start}-{f.end - 1}",
            "yes" if f.detected else "no",
            str(f.delay) if f.delay is not None else "-",
        )
        for f in flagged
    ]
    lines += _table(("metric", "anomaly", "rows", "detected", "delay (rows)"), rows, indent="  ", right=(4,))
    n_false = sum(len(v) for v in false_rows.values())
    lines.append(f"  false alarms: {n_false}")
    for metric, r in false_rows.items():
        if len(r):
            lines.append(f"    {metric}: {len(r)} at rows {_rows_text(r)}")
    return "\n".join(lines) + "\n"


def _summary_table(summary: list[tuple[str, int, int, float, float]], scored_rows: int) -> str:
    rows = [
        (family, f"{hit}/{total} ({100.0 * hit / total:.0f}%)" if total else "-", f"{fa:.2f}", f"{secs:.1f}")
        for family, hit, total, fa, secs in summary
    ]
    head = ("detector", "recall", "false alarms / 1,000 points", "fit s")
    lines = [f"Summary over {scored_rows:,} scored points:", *_table(head, rows, right=(1, 2, 3))]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
