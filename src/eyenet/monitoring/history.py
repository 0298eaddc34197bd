"""The last scored points of each live series, as an operator looks at them: per point its time, its
position in the stream, the value, the ensemble score, the alarm and its severity, what the model
expected with its band, and each member's score.

Router replicas send them with what they scored (:class:`eyenet.monitoring.monitor.Outbox`); the
monitor keeps them here, per (model, series), in columns. Appending is amortised O(1): a push adds
a chunk, and the chunks are joined (and the oldest points dropped) only once they hold twice the
per-series bound. The monitor bounds the total (``max_history_points``) by dropping whole series,
least recently pushed first, with their other data.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

#: the columns of a point, float64 but ``alarm`` (bool) and ``severity`` (int8: -1 not ready,
#: 0 normal, 1 warning, 2 critical); ``t`` is unix seconds, NaN when the point came without a timestamp
COLUMNS = ("t", "index", "value", "score", "alarm", "severity", "expected", "lo", "hi")
SEVERITY = {-1: None, 0: "normal", 1: "warning", 2: "critical"}
SEVERITY_CODE = {v: k for k, v in SEVERITY.items()}


def columns(points: list[dict[str, Any]], values: np.ndarray, index: np.ndarray, timestamps: np.ndarray | None,
            families: list[str]) -> dict[str, np.ndarray]:
    """The columns of scored response ``points`` (``values``, their stream positions ``index`` and
    ``timestamps``, datetime64, aligned with them), members' scores as ``member:<family>``."""
    n = len(points)
    nan = float("nan")

    def num(v: Any) -> float:
        return nan if v is None else float(v)

    band = [p.get("band") or (None, None) for p in points]
    if timestamps is None:
        t = np.full(n, nan)
    else:
        stamps = np.asarray(timestamps).astype("datetime64[ns]")
        t = np.where(np.isnat(stamps), nan, stamps.astype("int64") / 1e9)
    out = {
        "t": t,
        "index": np.asarray(index, dtype=float),
        "value": np.asarray(values, dtype=float),
        "score": np.array([num(p.get("score")) for p in points]),
        "alarm": np.array([bool(p.get("alarm")) for p in points]),
        "severity": np.array([SEVERITY_CODE.get(p.get("severity"), -1) for p in points], dtype=np.int8),
        "expected": np.array([num(p.get("expected")) for p in points]),
        "lo": np.array([num(b[0]) for b in band]),
        "hi": np.array([num(b[1]) for b in band]),
    }
    for f in families:
        out[f"member:{f}"] = np.array([num((p.get("detectors") or {}).get(f)) for p in points])
    return out


def joined(chunks: list[tuple[list[dict[str, Any]], np.ndarray, np.ndarray, np.ndarray | None, list[str]]]
           ) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """The arguments of :func:`columns` for several answers of one series in a row (the chunks a
    router replica gathered between two pushes): one table travels instead of one per request.
    A chunk sent without timestamps among chunks with them gets NaT (``t`` NaN)."""
    if len(chunks) == 1:
        return chunks[0]
    stamps = None
    if any(c[3] is not None for c in chunks):
        stamps = np.concatenate([np.full(len(c[1]), np.datetime64("NaT"), dtype="datetime64[ns]") if c[3] is None
                                 else np.asarray(c[3]).astype("datetime64[ns]") for c in chunks])
    return ([p for c in chunks for p in c[0]], np.concatenate([np.asarray(c[1], dtype=float) for c in chunks]),
            np.concatenate([np.asarray(c[2]) for c in chunks]), stamps, chunks[-1][4])


def table(views: dict[str, list[tuple[list[dict[str, Any]], np.ndarray, np.ndarray, np.ndarray | None, list[str]]]]
          ) -> dict[str, Any]:
    """Every series' chunks (as :func:`joined` takes them, one model version's: the same members) as
    one table: each column joined over all series, ``ids`` and ``ends`` saying whose rows are whose.
    A push of 10,000 new series is then a dozen arrays, not a dozen per series: Ray took ~5 us to
    pickle each small array, half a second of a router's interpreter for one such push."""
    ids = list(views)
    chunks = [c for sid in ids for c in views[sid]]
    ends = np.cumsum([sum(len(c[1]) for c in views[sid]) for sid in ids], dtype=np.int64)
    cols = columns(*joined(chunks)) if chunks else {}
    return {"ids": ids, "ends": ends, "columns": cols}


def rows(t: dict[str, Any]) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Each series' columns of a :func:`table` (copies: a series kept is not a view of the whole push)."""
    start = 0
    for sid, end in zip(t["ids"], t["ends"].tolist()):
        yield sid, {k: v[start:end].copy() for k, v in t["columns"].items()}
        start = end


class _Series:
    __slots__ = ("chunks", "n", "version", "alarms")

    def __init__(self) -> None:
        self.chunks: list[dict[str, np.ndarray]] = []
        self.n = 0
        self.version = 0
        self.alarms = 0


class SeriesHistory:
    """Per (model, series) the last ``per_series`` points (see the module docstring)."""

    def __init__(self, per_series: int = 10_000) -> None:
        self.per_series = per_series
        self.total = 0
        self._series: dict[tuple[str, str], _Series] = {}

    def add(self, name: str, sid: str, version: int, cols: dict[str, np.ndarray]) -> None:
        n = len(cols["value"])
        if not n:
            return
        s = self._series.get((name, sid))
        if s is None:
            s = self._series[(name, sid)] = _Series()
        s.chunks.append(cols)
        s.n += n
        s.version = version
        s.alarms += int(np.count_nonzero(cols["alarm"]))
        self.total += n
        if s.n > 2 * self.per_series:
            self._compact(s)

    def _compact(self, s: _Series) -> None:
        joined = _join(s.chunks)
        keep = min(s.n, self.per_series)
        cut = {k: v[-keep:] for k, v in joined.items()}
        self.total -= s.n - keep
        s.alarms = int(np.count_nonzero(cut["alarm"]))
        s.chunks, s.n = [cut], keep

    def forget(self, name: str, sid: str) -> None:
        s = self._series.pop((name, sid), None)
        if s is not None:
            self.total -= s.n

    def size(self, name: str, sid: str) -> int:
        s = self._series.get((name, sid))
        return 0 if s is None else s.n

    def keys(self) -> list[tuple[str, str]]:
        return list(self._series)

    def summary(self, name: str, sid: str) -> dict[str, Any]:
        """One line of the series list: its version, points kept, alarms among them, last time and score."""
        s = self._series[(name, sid)]
        last = s.chunks[-1]
        t, score = float(last["t"][-1]), float(last["score"][-1])
        return {"version": s.version, "points": min(s.n, self.per_series), "alarms": s.alarms,
                "last_ts": t if t == t else None, "last_score": score if score == score else None}

    def points(self, name: str, sid: str, limit: int) -> list[dict[str, Any]] | None:
        """The last ``limit`` points of a series, oldest first, as JSON-ready dicts; None if not kept."""
        s = self._series.get((name, sid))
        if s is None:
            return None
        if len(s.chunks) > 1 or s.n > self.per_series:  # joined once, read many times (the console polls)
            self._compact(s)
        cols = {k: v[-min(limit, self.per_series):] for k, v in s.chunks[0].items()}
        families = [k.split(":", 1)[1] for k in cols if k.startswith("member:")]
        lists = {k: _nums(v) for k, v in cols.items() if k not in ("alarm", "severity")}
        alarm, severity = cols["alarm"].tolist(), cols["severity"].tolist()
        out = []
        for i in range(len(alarm)):
            lo, hi = lists["lo"][i], lists["hi"][i]
            out.append({"t": lists["t"][i], "index": int(lists["index"][i]), "value": lists["value"][i],
                        "score": lists["score"][i], "alarm": alarm[i], "severity": SEVERITY[severity[i]],
                        "expected": lists["expected"][i], "band": None if lo is None else [lo, hi],
                        "detectors": {f: lists[f"member:{f}"][i] for f in families}})
        return out


def _join(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Chunks as one set of columns; a member column missing from a chunk (another version's
    members) is NaN there."""
    keys = list(dict.fromkeys(k for c in chunks for k in c))
    out = {}
    for k in keys:
        parts = [c[k] if k in c else np.full(len(c["value"]), np.nan) for c in chunks]
        out[k] = np.concatenate(parts)
    return out


def _nums(a: np.ndarray) -> list[float | None]:
    return [v if v == v and abs(v) != float("inf") else None for v in np.asarray(a, dtype=float).tolist()]
