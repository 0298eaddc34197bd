"""Alarm decisions on top of any [0, 1] scorer: threshold, k-of-n debounce, suppression.

Scoring and deciding are separate: a policy never changes a score, it only
decides which points raise an alarm. State is explicit so the same decision
comes out of a batch run and of a stream fed one point at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from eyenet.core.errors import InvalidParameterError


@dataclass
class AlarmState:
    recent: list[bool] = field(default_factory=list)  # last n-1 "over threshold" flags
    cooldown: int = 0  # points still suppressed after the last alarm
    # the series' open incident, if any (JSON-ready; kept and read by eyenet.serving.alerts), so that
    # it travels with the series' state from one server process to another
    incident: dict | None = None

    def to_dict(self) -> dict:
        out = {"recent": list(self.recent), "cooldown": self.cooldown}
        if self.incident is not None:
            out["incident"] = self.incident
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "AlarmState":
        return cls(recent=[bool(b) for b in d.get("recent", [])], cooldown=int(d.get("cooldown", 0)),
                   incident=d.get("incident"))


@dataclass(frozen=True)
class AlarmPolicy:
    """Alarm when at least ``k`` of the last ``n`` scores reach ``threshold``;
    after an alarm, stay quiet for ``suppress`` points (one incident, one page).

    ``reachable``: a model whose ranks start from a reference too short for any point to rank
    ``threshold`` lowers it to the rank of a point beyond every reference score
    (:attr:`eyenet.core.model.AnomalyModel.threshold`), so its streams can alarm from the start."""

    threshold: float = 0.7
    k: int = 1
    n: int = 1
    suppress: int = 0
    reachable: bool = True

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise InvalidParameterError(f"alarm threshold={self.threshold} must be in (0, 1]")
        if not (1 <= self.k <= self.n):
            raise InvalidParameterError(f"alarm needs 1 <= k <= n, got k={self.k}, n={self.n}")
        if self.suppress < 0:
            raise InvalidParameterError(f"alarm suppress={self.suppress} must be >= 0")
        if not isinstance(self.reachable, bool):
            raise InvalidParameterError(f"alarm reachable={self.reachable!r} must be true or false")

    def decide(self, scores: np.ndarray, state: AlarmState | None = None) -> tuple[np.ndarray, AlarmState]:
        """Alarm flags for ``scores`` (NaN = not ready = no alarm) and the state after them."""
        st = AlarmState(list(state.recent), state.cooldown, state.incident) if state else AlarmState()
        s = np.asarray(scores, dtype=float)
        with np.errstate(invalid="ignore"):
            over = (s >= self.threshold).tolist()
        alarms = np.zeros(len(s), dtype=bool)
        recent, cooldown, k, keep = st.recent, st.cooldown, self.k, self.n - 1
        for i, o in enumerate(over):
            recent.append(o)
            if cooldown > 0:
                cooldown -= 1
            elif o and sum(recent) >= k:
                alarms[i] = True
                cooldown = self.suppress
            if len(recent) > keep:
                del recent[: len(recent) - keep]
        st.recent, st.cooldown = recent, cooldown
        return alarms, st
