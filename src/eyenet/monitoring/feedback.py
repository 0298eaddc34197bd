"""Operator feedback on alarms, and the precision, false-positive rate and alarm rate it gives.

``POST /v1/feedback`` marks points of a series as ``true_anomaly`` (an alarm
that was right), ``false_alarm`` (an alarm that was wrong) or
``missed_anomaly`` (an anomaly no alarm caught). A :class:`FeedbackTracker`
keeps, per model, the alarms the serving path raised (``record_alarms``) and
the labels operators sent (``record``), over a sliding time window and in
total:

- precision = true anomalies / (true anomalies + false alarms), among labelled alarms;
- false-positive rate = false alarms / points scored;
- alarm rate = alarms / points scored.

Every label is appended to a JSON-lines file (``.eyenet/feedback.jsonl`` by
default), the durable record of who said what, when; a new tracker replays it.
Counts are label events: marking the same point twice counts twice.

The HTTP request and its validation (``FeedbackRequest``, ``check_feedback``,
which make a :class:`Feedback`) are the serving layer's, in
:mod:`eyenet.serving.schemas`.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eyenet.core.errors import InvalidParameterError
from eyenet.lifecycle import registry as reg

LABELS: tuple[str, ...] = ("true_anomaly", "false_alarm", "missed_anomaly")
FILE = "feedback.jsonl"


@dataclass(frozen=True)
class Feedback:
    """A validated feedback request: one label on ``points`` points of one series of one model."""

    model: str
    series: str
    label: str
    points: int
    timestamps: list[str] | None = None  # ISO 8601, UTC
    indices: list[int] | None = None
    version: int | None = None
    note: str | None = None
    by: str | None = None
    received: float = field(default_factory=time.time)  # unix seconds

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def read(path: str | Path | None) -> Iterator[Feedback]:
    """The labels of a feedback file, oldest first; a line that is not a label (a torn last write) is
    skipped, and a missing file holds none."""
    if path is None or not Path(path).exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                fb = Feedback(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue
            if fb.label in LABELS and fb.points >= 0:
                yield fb


# ----------------------------------------------------------------------------------------------
# the tracker


def default_path(root: str | Path | None = None) -> Path:
    """Where a service keeps its feedback: ``.eyenet/feedback.jsonl`` (see :func:`eyenet.lifecycle.registry.home`)."""
    return reg.home(root) / FILE


@dataclass
class Counts:
    """Points scored, alarms raised and labels received; the rates they give (None: nothing to divide by)."""

    points: int = 0
    alarms: int = 0
    true_anomaly: int = 0
    false_alarm: int = 0
    missed_anomaly: int = 0

    def add(self, other: Counts) -> None:
        self.points += other.points
        self.alarms += other.alarms
        self.true_anomaly += other.true_anomaly
        self.false_alarm += other.false_alarm
        self.missed_anomaly += other.missed_anomaly

    @property
    def labelled_alarms(self) -> int:
        return self.true_anomaly + self.false_alarm

    @property
    def precision(self) -> float | None:
        return self.true_anomaly / self.labelled_alarms if self.labelled_alarms else None

    @property
    def recall(self) -> float | None:
        found = self.true_anomaly + self.missed_anomaly
        return self.true_anomaly / found if found else None

    @property
    def false_positive_rate(self) -> float | None:
        return self.false_alarm / self.points if self.points else None

    @property
    def alarm_rate(self) -> float | None:
        return self.alarms / self.points if self.points else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "precision": self.precision, "recall": self.recall,
                "false_positive_rate": self.false_positive_rate, "alarm_rate": self.alarm_rate}


class FeedbackTracker:
    """Per model: alarms and operator labels over the last ``window_s`` seconds and in total.

    ``path`` (:func:`default_path` in a service; None keeps nothing on disk)
    is appended on every label and replayed when the tracker starts.
    ``min_labels``: the windowed precision is reported only once this many
    alarms were labelled in the window (one early false alarm is not a
    precision of 0). Thread-safe.
    """

    def __init__(self, path: str | Path | None, *, window_s: float = 3600.0, buckets: int = 60,
                 min_labels: int = 5, clock: Callable[[], float] = time.time) -> None:
        if window_s <= 0 or buckets < 1 or min_labels < 1:
            raise InvalidParameterError(f"window_s={window_s}, buckets={buckets}, min_labels={min_labels}: "
                                        "need window_s > 0, buckets >= 1, min_labels >= 1")
        self.path = Path(path) if path is not None else None
        self.window_s = float(window_s)
        self.bucket_s = self.window_s / buckets
        self.min_labels = min_labels
        self.clock = clock
        self._total: dict[str, Counts] = {}
        self._buckets: dict[str, deque[tuple[int, Counts]]] = {}
        self._lock = threading.Lock()
        self.replayed = self._replay()

    def _add(self, model: str, at: float, counts: Counts, now: float) -> None:
        total = self._total.get(model)
        if total is None:
            total = self._total[model] = Counts()
            self._buckets[model] = deque()
        total.add(counts)
        b = int(at // self.bucket_s)
        q = self._buckets[model]
        if not q or q[-1][0] < b:
            q.append((b, counts))
        elif q[-1][0] == b:
            q[-1][1].add(counts)
        else:  # a record older than the newest bucket (received out of order): keep buckets in time order
            for i, (start, c) in enumerate(q):
                if start == b:
                    c.add(counts)
                    break
                if start > b:
                    q.insert(i, (b, counts))
                    break
        self._expire(model, now)

    def _expire(self, model: str, now: float) -> None:
        q = self._buckets.get(model)
        first = int((now - self.window_s) // self.bucket_s) + 1
        while q and q[0][0] < first:
            q.popleft()

    def record_alarms(self, model: str, points: int, alarms: int) -> None:
        """What the serving path feeds after scoring: ``points`` new points of ``model``, ``alarms`` of them alarmed."""
        if points < 0 or not 0 <= alarms <= points:
            raise InvalidParameterError(f"{model}: {alarms} alarms in {points} points")
        now = self.clock()
        with self._lock:
            self._add(model, now, Counts(points=points, alarms=alarms), now)

    def record(self, feedback: Feedback) -> None:
        """Append a label to the file (flushed to disk), then count it."""
        if feedback.label not in LABELS:
            raise InvalidParameterError(f"label {feedback.label!r} is not one of {LABELS}")
        line = (json.dumps(feedback.to_dict(), sort_keys=True) + "\n").encode()
        with self._lock:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a+b") as f:
                    if f.tell():  # after a torn last write, start a new line rather than extend it
                        f.seek(-1, os.SEEK_END)
                        if f.read(1) != b"\n":
                            line = b"\n" + line
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
            self._count(feedback)

    def _count(self, fb: Feedback) -> None:
        self._add(fb.model, fb.received, Counts(**{fb.label: fb.points}), self.clock())

    def _replay(self) -> int:
        """Count the labels already in the file."""
        n = 0
        for fb in read(self.path):
            self._count(fb)
            n += 1
        return n

    def models(self) -> list[str]:
        return sorted(self._total)

    def window(self, model: str) -> Counts:
        """Counts of the last ``window_s`` seconds (to within one bucket)."""
        with self._lock:
            self._expire(model, self.clock())
            out = Counts()
            for _, c in self._buckets.get(model, ()):
                out.add(c)
            return out

    def total(self, model: str) -> Counts:
        with self._lock:
            return Counts(**asdict(self._total.get(model, Counts())))

    def precision(self, model: str) -> float | None:
        """Windowed precision, or None before ``min_labels`` alarms were labelled in the window."""
        w = self.window(model)
        return w.precision if w.labelled_alarms >= self.min_labels else None

    def report(self, model: str | None = None) -> dict[str, dict[str, Any]]:
        """Per model: ``{"window": counts and rates, "total": counts and rates}`` (JSON-safe)."""
        names = [model] if model is not None else self.models()
        out = {}
        for m in names:
            w = self.window(m).to_dict()
            if w["true_anomaly"] + w["false_alarm"] < self.min_labels:
                w["precision"] = None
            out[m] = {"window_s": self.window_s, "window": w, "total": self.total(m).to_dict()}
        return out
