"""How long scoring takes in-process: the floor under any serving overhead (``eyenet bench``).

Times are wall-clock per call after a warm-up; summaries keep the tail
(p99), since an on-call path is judged by its slowest answers.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from eyenet.core.model import AnomalyModel


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call (p50, p99) and the points per second they imply."""

    what: str
    calls: int
    p50_ms: float
    p99_ms: float
    points_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_calls(fn: Callable[[], Any], calls: int, *, warmup: int = 20) -> np.ndarray:
    """Seconds of each of ``calls`` calls of ``fn`` (after ``warmup`` untimed ones)."""
    for _ in range(warmup):
        fn()
    out = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out


def summarize(what: str, seconds: np.ndarray, points_per_call: int) -> Timing:
    p50, p99 = np.percentile(seconds, [50, 99])
    return Timing(what, len(seconds), 1e3 * float(p50), 1e3 * float(p99), points_per_call / float(np.median(seconds)))


def stream_step(model: AnomalyModel, history: np.ndarray, live: np.ndarray, calls: int) -> Timing:
    """One new point of a warm stream (``history`` already seen), the real-time path."""
    _, state = model.score_stream(history)
    points = iter(np.resize(live, calls + 20))

    def step() -> None:
        nonlocal state
        _, state = model.score_stream(np.array([next(points)]), state)

    return summarize("stream, 1 point", time_calls(step, calls), 1)


def window(model: AnomalyModel, values: np.ndarray, size: int, calls: int) -> Timing:
    """A window of ``size`` points from a fresh stream (a detect request)."""
    w = values[-size:]
    return summarize(f"window, {len(w)} points", time_calls(lambda: model.score(w), calls, warmup=3), len(w))
