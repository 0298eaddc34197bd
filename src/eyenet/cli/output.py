"""What the command line prints: messages on stderr, plain-text tables."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

PROG = "eyenet"


def error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def table(head: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "", right: Sequence[int] = ()) -> list[str]:
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]

    def line(r: Sequence[str]) -> str:
        cells = [r[c].rjust(widths[c]) if c in right else r[c].ljust(widths[c]) for c in range(len(r))]
        return (indent + "  ".join(cells)).rstrip()

    return [line(head), indent + "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def duration(td: Any) -> str:
    secs = float(td.total_seconds())
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if secs >= size:
            return f"{round(secs / size, 1):g} {unit}"
    return f"{secs:g} s"
