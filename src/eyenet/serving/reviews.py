"""Reviewing challengers: each new ``challenger`` of a served ensemble goes through the gate
(:func:`eyenet.lifecycle.promotion.review`) by itself, so registering a model is all it takes to have it
promoted or archived. The outcomes are kept for status reports."""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Callable

from eyenet.core.errors import LifecycleError
from eyenet.lifecycle import gate, promotion
from eyenet.lifecycle.registry import CHALLENGER, CHAMPION, Registry
from eyenet.serving.admission import ACTOR
from eyenet.serving.switching import short

#: a review that failed (the registry away, say) is tried again after this long
RETRY_S = 60.0


class Reviews:
    """The challenger reviews of one controller. ``promoted`` is called when a review moved the champion."""

    def __init__(self, registry: Registry, policy: gate.GatePolicy, *, enabled: bool = True,
                 promoted: Callable[[], None] = lambda: None) -> None:
        self.registry = registry
        self.policy = policy
        self.enabled = enabled
        self.promoted = promoted
        self.done: deque[dict[str, Any]] = deque(maxlen=100)
        self.reviewing: dict[str, asyncio.Task] = {}
        self._after: dict[tuple[str, int], float] = {}  # (model, challenger) -> earliest next review

    def due(self, name: str, aliases: dict[str, int], now: float, *, busy: bool = False) -> int | None:
        """The challenger version of ``name`` to review now, or None. The app serves ensembles; a model
        ``busy`` with a retraining reviews its own result; a challenger the gate could not judge is not
        tried again (a failure is retried after :data:`RETRY_S`)."""
        challenger = aliases.get(CHALLENGER)
        if (not self.enabled or challenger is None or not name.endswith(".ensemble") or busy
                or name in self.reviewing or aliases.get(CHAMPION) == challenger
                or now < self._after.get((name, challenger), 0.0)):
            return None
        return challenger

    def hold(self, name: str, version: int) -> None:
        """Leave challenger ``version`` of ``name`` to an operator: never reviewed automatically."""
        self._after[(name, version)] = float("inf")

    def start(self, name: str, version: int) -> asyncio.Task:
        task = self.reviewing[name] = asyncio.get_running_loop().create_task(self._review(name, version))
        return task

    async def review(self, name: str) -> promotion.Outcome:
        """Gate the challenger of ``name`` now (promote or archive it) and keep the outcome."""
        out = await asyncio.to_thread(promotion.review, self.registry, name, policy=self.policy, actor=ACTOR)
        self.done.append({"time": time.time(), **out.to_dict()})
        if out.action == "promoted":
            self.promoted()  # pick the new champion up now
        return out

    async def _review(self, name: str, version: int) -> None:
        self._after[(name, version)] = time.time() + RETRY_S
        try:
            await self.review(name)
        except LifecycleError as exc:  # e.g. the challenger was already dealt with: not again
            self._after[(name, version)] = float("inf")
            self.done.append({"time": time.time(), "name": name, "action": "skipped", "reason": str(exc)})
        except Exception as exc:  # noqa: BLE001 - retried at the next poll
            self.done.append({"time": time.time(), "name": name, "action": "failed", "reason": short(exc)})
        finally:
            self.reviewing.pop(name, None)
