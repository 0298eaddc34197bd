"""The operator API of the controller: promote, review, roll back, read the history.

Each lifecycle step runs against the registry (:mod:`eyenet.lifecycle.promotion`)
and then waits for the controller to switch to its outcome (``sync``), so the
answer says what serves. A version the serving check refuses (one forced past
the gate) is an error naming the reason.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from eyenet.core.errors import GateRejectedError
from eyenet.lifecycle import gate, promotion
from eyenet.lifecycle.registry import Registry
from eyenet.serving.admission import ACTOR, Admission


class Operations:
    """``sync(wait=True)`` re-reads the aliases and waits for the switches that starts; it returns the
    controller's status (with its ``table``)."""

    def __init__(self, registry: Registry, policy: gate.GatePolicy, admission: Admission,
                 sync: Callable[..., Awaitable[dict[str, Any]]]) -> None:
        self.registry = registry
        self.policy = policy
        self.admission = admission
        self.sync = sync

    async def _lifecycle(self, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run a lifecycle step against the registry, then switch to its outcome before answering."""
        started = time.time()
        out = await asyncio.to_thread(fn, self.registry, *args, **kwargs)
        status = await self.sync(wait=True)
        refused = self.admission.refused.get(out.name)
        if refused and refused["version"] == out.champion and refused["time"] >= started:
            raise GateRejectedError(f"{out.name}: {refused['reason']}; champion moved back to version "
                                    f"{status['table'].get(out.name, {}).get('version')}")
        return {"outcome": out.to_dict(), "serving": status["table"].get(out.name)}

    async def promote(self, name: str, version: int | None = None, *, force: bool = False, reason: str = "",
                      actor: str | None = None) -> dict[str, Any]:
        return await self._lifecycle(promotion.promote, name, version, force=force, reason=reason,
                                     actor=actor or ACTOR, policy=self.policy)

    async def review(self, name: str, actor: str | None = None) -> dict[str, Any]:
        return await self._lifecycle(promotion.review, name, actor=actor or ACTOR, policy=self.policy)

    async def rollback(self, name: str, *, to_version: int | None = None, reason: str = "",
                       actor: str | None = None) -> dict[str, Any]:
        return await self._lifecycle(promotion.rollback, name, to_version=to_version, reason=reason,
                                     actor=actor or ACTOR)

    async def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        events = await asyncio.to_thread(promotion.history, self.registry, name, limit)
        return [e.to_dict() for e in events]
