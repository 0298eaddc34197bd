"""``eyenet models``: list versions; review, promote and roll back champions; show the audit history.

``eyenet models`` alone (and ``eyenet models --json``) lists, as it always
has. The lifecycle subcommands call :mod:`eyenet.lifecycle.promotion`; errors propagate
to :func:`eyenet.cli.main`, which turns them into one line and an exit code.
"""
from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from eyenet.cli.arguments import positive_int
from eyenet.cli.output import table
from eyenet.core.errors import GateRejectedError
from eyenet.core.redact import redact


def _nonnegative(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not v >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return v


def _positive(text: str) -> float:
    v = _nonnegative(text)
    if v == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return v


def add_parsers(sub: Any) -> None:
    models = sub.add_parser(
        "models",
        help="registered models: list, review, promote, rollback, history",
        description=(
            "Without a subcommand: list the registered EyeNet models in MLflow with their versions, aliases and "
            "metrics. 'review' gates the challenger against the champion on held-out labelled data and promotes "
            "or archives it; 'promote' and 'rollback' move the champion alias (what is served); 'history' shows "
            "the audit events. Every change is recorded in the audit log (.eyenet/audit.jsonl; EYENET_AUDIT_URI: "
            "another file or a postgresql:// URI)."
        ),
    )
    _list_args(models, None)
    models.set_defaults(func=cmd_list)
    cmds = models.add_subparsers(dest="models_command", metavar="<subcommand>")

    ls = cmds.add_parser("list", help="list registered models, versions, aliases and metrics")
    _list_args(ls, argparse.SUPPRESS)  # SUPPRESS: keep what `models --json list` set before the subcommand
    ls.set_defaults(func=cmd_list)

    review = cmds.add_parser(
        "review", help="gate the challenger against the champion; promote it or archive it",
        description=(
            "Score the challenger and the champion on the challenger's held-out labelled data (NAB standard "
            "score, alarm precision and recall, finite outputs, calibration sanity, stream-step latency). "
            "Promote the challenger when it passes every check and beats the champion by the margin; "
            "otherwise archive it with the reason. Exit code 0 when promoted, 6 when rejected."
        ),
    )
    review.add_argument("name", metavar="NAME", help="registered model (<tenant>.<group>.<family>)")
    _gate_args(review)
    review.add_argument("--json", action="store_true", help="print the outcome as JSON")
    review.set_defaults(func=cmd_review)

    promote = cmds.add_parser(
        "promote", help="make a version champion (gated unless --force)",
        description="Make a version (default: the challenger) the champion. The deployment gate runs as in "
                    "'review' and a rejection archives the version; --force skips the gate (the version must "
                    "still load) and the audit log records that it was forced.",
    )
    promote.add_argument("name", metavar="NAME")
    promote.add_argument("--version", type=positive_int, metavar="N", help="version to promote (default: the challenger)")
    promote.add_argument("--force", action="store_true", help="skip the gate (recorded in the audit log)")
    promote.add_argument("--reason", default="", metavar="TEXT", help="why, for the audit log")
    _gate_args(promote)
    promote.add_argument("--json", action="store_true")
    promote.set_defaults(func=cmd_promote)

    rollback = cmds.add_parser(
        "rollback", help="return the champion to the previous good version",
        description="Move the champion alias back to the version it replaced (skipping versions rolled back or "
                    "archived since), or to --to N. The withdrawn version is tagged rolled-back.",
    )
    rollback.add_argument("name", metavar="NAME")
    rollback.add_argument("--to", type=positive_int, metavar="N", help="the version to return to")
    rollback.add_argument("--reason", default="", metavar="TEXT", help="why, for the audit log")
    rollback.add_argument("--json", action="store_true")
    rollback.set_defaults(func=cmd_rollback)

    hist = cmds.add_parser("history", help="audit events of a model: train, register, gate, promote, rollback",
                           description="The audit events of a model in order, with time, actor, version and reason.")
    hist.add_argument("name", metavar="NAME")
    hist.add_argument("--limit", type=positive_int, metavar="N", help="only the last N events")
    hist.add_argument("--json", action="store_true", help="print JSON (with the metrics of each event)")
    hist.set_defaults(func=cmd_history)


def _list_args(p: argparse.ArgumentParser, default: Any) -> None:
    kw = {"default": default} if default is not None else {}
    p.add_argument("--name", metavar="MODEL", help="only this registered model (<tenant>.<group>.<family>)", **kw)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table", **kw)


def _gate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--margin", type=_nonnegative, metavar="POINTS",
                   help="NAB standard points the version must gain over the champion (default 1)")
    p.add_argument("--latency-budget-ms", type=_positive, metavar="MS",
                   help="budget for one stream step, p50 (default 10)")


def _policy(args: argparse.Namespace) -> Any:
    from eyenet.lifecycle.gate import GatePolicy

    given = {"margin": args.margin, "latency_budget_ms": args.latency_budget_ms}
    return GatePolicy.from_dict({k: v for k, v in given.items() if v is not None})


def _registry() -> Any:
    from eyenet.lifecycle import registry

    return registry.Registry().check()


def _name(text: str) -> str:
    from eyenet.lifecycle.registry import split_name

    split_name(text)  # UnknownNameError naming the expected form
    return text


def _print_outcome(out: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(out.to_dict(), indent=2))
        return
    was = f" (was version {out.previous})" if out.previous is not None else ""
    if out.action == "promoted":
        print(f"{out.name} version {out.version} is champion{was}: {out.reason}")
    elif out.action == "rolled-back":
        print(f"{out.name} rolled back: version {out.version} is champion{was}: {out.reason}")
    else:
        print(f"{out.name} version {out.version} rejected and archived: {out.reason}")


# ----------------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    reg = _registry()
    versions = reg.versions(_name(args.name) if args.name else None)
    if args.json:
        print(json.dumps([v.to_dict() for v in versions], indent=2))
        return 0
    if not versions:
        print(f"no registered models in {redact(reg.uri)}; run 'eyenet train'")
        return 0
    rows = []
    for v in versions:
        when = datetime.fromtimestamp(v.created, tz=UTC).strftime("%Y-%m-%d %H:%M")
        shown = {k: v.metrics[k] for k in ("fit_seconds", "train_alarm_rate", "tune_best_score") if k in v.metrics}
        metrics = " ".join(f"{k}={x:.3g}" for k, x in shown.items())
        status = v.tags.get("eyenet.status", "-")
        rows.append((v.name, str(v.version), ",".join(v.aliases) or "-", status, when, metrics))
    print("\n".join(table(("model", "version", "aliases", "status", "created (UTC)", "metrics"), rows, right=(1,))))
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from eyenet.lifecycle import promotion

    name, policy = _name(args.name), _policy(args)
    out = promotion.review(_registry(), name, policy=policy)
    _print_outcome(out, args.json)
    return 0 if out.action == "promoted" else GateRejectedError.exit_code


def cmd_promote(args: argparse.Namespace) -> int:
    from eyenet.lifecycle import promotion

    name, policy = _name(args.name), _policy(args)
    out = promotion.promote(_registry(), name, args.version, reason=args.reason, policy=policy, force=args.force)
    _print_outcome(out, args.json)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from eyenet.lifecycle import promotion

    out = promotion.rollback(_registry(), _name(args.name), reason=args.reason, to_version=args.to)
    _print_outcome(out, args.json)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from eyenet.lifecycle import promotion

    events = promotion.history(_registry(), _name(args.name), args.limit)
    if args.json:
        print(json.dumps([e.to_dict() for e in events], indent=2))
        return 0
    if not events:
        print(f"no audit events for {args.name}")
        return 0
    rows = [
        (datetime.fromtimestamp(e.time, tz=UTC).strftime("%Y-%m-%d %H:%M:%S"), e.event,
         "-" if e.version is None else str(e.version), "-" if e.previous is None else str(e.previous), e.actor, e.reason)
        for e in events
    ]
    print("\n".join(table(("time (UTC)", "event", "version", "champion before", "actor", "reason"), rows, right=(2, 3))))
    return 0
