"""Admission: whether a registered version may serve, and what happens to one that may not.

Before a version serves, the controller loads it and checks it on held-out data
(:func:`serving_problems`): it must load, give finite scores within [0, 1] and
meet the latency budget (:mod:`eyenet.lifecycle.gate`). The verdict is kept on
the version as its ``eyenet.serving_check`` tag, so a restarted controller does
not check it again. A version that fails is refused (:meth:`Admission.refuse`):
a REJECT event with the reason, and the alias moved back to the version that
serves (ROLLBACK).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any


from eyenet.core.errors import EyenetError, LifecycleError
from eyenet.core.evaluation import ValidationSeries
from eyenet.lifecycle import audit, gate, holdout, tuning
from eyenet.lifecycle.registry import Registry

log = logging.getLogger(__name__)

#: who the controller's audit events are attributed to
ACTOR = "controller"
#: version tag: "passed" once the controller checked the version can serve, else why it cannot
CHECK_TAG = audit.TAG + "serving_check"
PASSED = "passed"


def probe_series(registry: Registry, name: str, version: int, rows: int) -> list[ValidationSeries]:
    """What a version is checked on before it serves: its held-out data (cut to ``rows``), or, when it
    does not record its training data, a synthetic series."""
    try:
        series = holdout.validation_for(registry, name, version)
    except LifecycleError:
        series = tuning.from_synthetic(metrics=("cpu_pct",), n=max(rows, 800), seed=7)
    out = []
    for s in series:
        n = min(len(s.values), max(rows, s.train_rows + 200))
        out.append(ValidationSeries(s.name, s.values[:n], [(a, min(b, n - 1)) for a, b in s.windows if a < n],
                                    min(s.train_rows, n)))
    return out


def serving_problems(registry: Registry, name: str, version: int, policy: gate.GatePolicy, rows: int) -> list[str]:
    """Why ``version`` must not serve (empty: it may): it fails to load or crashes, gives NaN/inf or
    scores outside [0, 1], or is slower than the latency budget. Quality is the gate's business
    (:func:`eyenet.lifecycle.promotion.review`); this check also covers versions forced past the gate."""
    series = probe_series(registry, name, version, rows)
    report = gate.evaluate_version(registry, name, version, series, policy)
    if report.error:
        return [report.error]
    found = gate.problems(report, policy)
    keep = ("non-finite", "latency budget", "outside [0, 1]")
    return [p for p in found if any(k in p for k in keep)]


class Admission:
    """The serving check of one controller, and the versions it refused (``refused``: model -> record).

    Registry calls run in threads, so the caller's event loop keeps answering."""

    def __init__(self, registry: Registry, policy: gate.GatePolicy, *, rows: int, alias: str) -> None:
        self.registry = registry
        self.policy = policy
        self.rows = rows
        self.alias = alias
        self.refused: dict[str, dict[str, Any]] = {}

    async def check(self, name: str, version: int) -> list[str]:
        """Why ``version`` must not serve (empty: it may); the verdict is kept on the version's tag."""
        info = await asyncio.to_thread(self.registry.version, name, version)
        if info.tags.get(CHECK_TAG) == PASSED:
            return []
        found = await asyncio.to_thread(serving_problems, self.registry, name, version, self.policy, self.rows)
        await asyncio.to_thread(self.registry.set_tags, name, version,
                                {CHECK_TAG: PASSED if not found else "; ".join(found)[:4000]})
        return found

    def admitted(self, name: str) -> None:
        """A version of ``name`` passed: an earlier refusal no longer stands."""
        self.refused.pop(name, None)

    def is_refused(self, name: str, version: int) -> bool:
        return self.refused.get(name, {}).get("version") == version

    @staticmethod
    def reason(version: int, found: list[str]) -> str:
        return f"version {version} cannot serve: {'; '.join(found)}"

    async def refuse(self, name: str, old: int | None, new: int, reason: str) -> None:
        """``new`` must not serve: record it (REJECT, archived) and move the alias back to ``old``."""
        self.refused[name] = {"version": new, "reason": reason, "time": time.time()}
        await asyncio.to_thread(audit.record, self.registry, audit.REJECT, name, new, reason=reason, actor=ACTOR,
                                previous=old, status=audit.ARCHIVED)
        if old is None:
            return
        try:
            await asyncio.to_thread(self.registry.set_alias, name, self.alias, old)
            await asyncio.to_thread(audit.record, self.registry, audit.ROLLBACK, name, old, actor=ACTOR,
                                    previous=new, status=audit.PROMOTED, reason=f"{self.alias} moved back: {reason}")
        except EyenetError as exc:
            log.warning("controller: could not move %s back to version %s: %s", name, old, exc)
