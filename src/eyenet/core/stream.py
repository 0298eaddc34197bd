"""One series scored point by point, for notebooks and scripts: ``stream.score_one(x)``.

The same code as the served ``/v1/stream`` (:meth:`AnomalyModel.score_stream`
with the state carried between calls), so a notebook sees the numbers the
server would give on the same points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from eyenet.core.errors import InvalidInputError


@dataclass(frozen=True)
class PointScore:
    """The verdict on one point. ``ready`` is False while the model still lacks history: then
    ``score`` is NaN and ``alarm`` False, which means "not judged", not "normal"."""

    value: float
    score: float
    calibrated: float
    alarm: bool
    ready: bool
    seen: int  # points of the stream so far, this one included


class Stream:
    """A stream of one series through a fitted :class:`~eyenet.core.model.AnomalyModel` (``model.stream()``);
    keeps the stream's state between calls."""

    def __init__(self, model: Any, state: Any = None) -> None:
        self.model = model
        self.state = state if state is not None else model.new_state()

    def score_one(self, value: float) -> PointScore:
        """Score the next point of the series."""
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise InvalidInputError(f"value: expected a number, got {value!r}") from None
        if not math.isfinite(x):
            raise InvalidInputError(f"value: expected a finite number, got {x}")
        s = self.score_many([x])
        score = float(s.score[0])
        return PointScore(x, score, float(s.calibrated[0]), bool(s.alarm[0]), math.isfinite(score), self.state.seen)

    def score_many(self, values: Any) -> Any:
        """Score the next points of the series in one call (same numbers as one at a time): a
        :class:`~eyenet.core.model.Scores`."""
        scores, self.state = self.model.score_stream(np.asarray(values, dtype=float), self.state)
        return scores
