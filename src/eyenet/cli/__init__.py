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
from collections.abc import Sequence
from pathlib import Path

from eyenet import __version__
from eyenet.cli import keys, local, models, training
from eyenet.cli.arguments import fraction, name_list, number, positive_int
from eyenet.cli.demo import cmd_demo
from eyenet.cli.offline import cmd_bench, cmd_detectors, cmd_evaluate, cmd_score
from eyenet.cli.output import PROG, error
from eyenet.core import presets
from eyenet.core.errors import EyenetError, exit_code_for


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
    up.add_argument("--rows", type=positive_int, default=presets.UP_ROWS, help=argparse.SUPPRESS)
    up.add_argument("--detectors", type=name_list, default=None, help=argparse.SUPPRESS)
    up.add_argument("--metrics", type=name_list, default=None, help=argparse.SUPPRESS)
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
    score.add_argument("--workers", type=positive_int, metavar="N", help="processes for --corpus (default: CPU count)")
    train = score.add_mutually_exclusive_group()
    train.add_argument("--train-rows", type=positive_int, metavar="N", help="--input: fit on the first N rows")
    train.add_argument(
        "--train-fraction", type=fraction, metavar="F",
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
        "--threshold", type=number, metavar="T", default=None,
        help="the detector's own alarm threshold (default: the default model's alarm threshold)",
    )
    ev.add_argument("--files", action="store_true", help="also print per-file counts")
    ev.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    ev.set_defaults(func=cmd_evaluate)

    det = sub.add_parser("detectors", help="list the registered detector families and their default parameters")
    det.set_defaults(func=cmd_detectors)

    bench = sub.add_parser(
        "bench",
        help="time in-process scoring on this machine: one-point stream steps and windows, p50 and p99",
        description=(
            "Fit each model on synthetic telemetry, then time a one-point stream step (the real-time "
            "path) and the scoring of a window of --window points, and print p50 / p99 in milliseconds "
            "and points per second. No Ray, no server: the floor under any serving overhead."
        ),
    )
    bench.add_argument("--detectors", type=name_list, default=None, metavar="NAMES",
                       help="comma-separated families (default: the default ensemble and its members)")
    bench.add_argument("--calls", type=positive_int, default=300, metavar="N", help="timed calls per measurement")
    bench.add_argument("--window", type=positive_int, default=256, metavar="N", help="points per window")
    bench.add_argument("--json", action="store_true", help="print the figures as JSON")
    bench.set_defaults(func=cmd_bench)

    training.add_parsers(sub)
    models.add_parsers(sub)
    local.add_parsers(sub)
    keys.add_parsers(sub)

    return parser


# ----------------------------------------------------------------------------------------------
# main: the one place where errors become messages and exit codes


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``eyenet`` command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except EyenetError as exc:
        error(str(exc))
        return exit_code_for(exc)
    except OSError as exc:
        what = f"{exc.strerror or type(exc).__name__}: {exc.filename}" if exc.filename else str(exc)
        error(what)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
