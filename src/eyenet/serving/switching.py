"""Version switching: the serving table every router replica follows, and the live switch from one version to the next.

The table maps each model to an :class:`Entry`. A switch (the served alias
moved) goes in three steps, none of which pauses a request:

1. *prepare*: the entry announces the new version as ``next``; each router
   replica loads it beside the version it serves and reports ready
   (:meth:`Switchboard.ready`). Meanwhile the version goes through the serving
   check (:class:`~eyenet.serving.admission.Admission`); a version that fails
   is withdrawn from the table and refused.
2. *switch*: once every live replica is ready, the entry names an instant
   ``at`` (:meth:`Switchboard.lead_s` ahead); every replica resolves requests
   that start at or after it to the new version, and earlier ones to the old.
3. *settle*: the entry becomes the new version alone; when every replica
   reports serving it, the switch is recorded (SERVE event) with its timings.

Nothing here needs Ray: replicas are known only from their calls.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from eyenet.core.errors import UnknownNameError
from eyenet.core.redact import redact
from eyenet.lifecycle import audit
from eyenet.lifecycle.registry import Registry
from eyenet.serving.admission import ACTOR, Admission
from eyenet.serving.settings import ControllerActorSettings

log = logging.getLogger(__name__)


def short(exc: BaseException) -> str:
    """The first line of an error, cut to 300 characters (what status reports show)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(text)[:300]


@dataclass
class Entry:
    """What a model serves: ``version``; ``next`` once announced; from wall-clock ``at`` on, ``next``."""

    version: int
    next: int | None = None
    at: float | None = None

    def serving(self, now: float) -> int:
        return self.next if self.next is not None and self.at is not None and now >= self.at else self.version

    def to_list(self) -> list[Any]:
        return [self.version, self.next, self.at]

    @classmethod
    def from_list(cls, v: list[Any]) -> Entry:
        return cls(int(v[0]), None if v[1] is None else int(v[1]), None if v[2] is None else float(v[2]))


@dataclass
class Replica:
    """A router replica as the controller knows it from its calls."""

    seen: float
    ready: set[tuple[str, int]] = field(default_factory=set)
    serving: dict[str, int] = field(default_factory=dict)
    armed: dict[tuple[str, int], float] = field(default_factory=dict)  # when it learnt the switch instant


class Switchboard:
    """The serving table, the router replicas as they report, and the switches under way.

    :meth:`start` must be called on the event loop that uses it (an actor's constructor has none)."""

    def __init__(self, settings: ControllerActorSettings, registry: Registry, admission: Admission) -> None:
        self.settings = settings
        self.registry = registry
        self.admission = admission
        self.incarnation = uuid.uuid4().hex[:12]
        self.epoch = 0
        self.table: dict[str, Entry] = {}
        self.replicas: dict[str, Replica] = {}
        self.swaps: deque[dict[str, Any]] = deque(maxlen=100)
        self.arm_lags: deque[float] = deque(maxlen=5)  # how long replicas took to learn a switch instant
        self.switching: dict[str, asyncio.Task] = {}
        self._recs: dict[str, dict[str, Any]] = {}
        self._changed: asyncio.Event | None = None
        self._replica_news: asyncio.Event | None = None

    def start(self) -> None:
        if self._changed is None:
            self._changed, self._replica_news = asyncio.Event(), asyncio.Event()

    # -- the table -------------------------------------------------------------------------
    def publish(self) -> None:
        """A new epoch: wake every replica waiting in :meth:`wait_change`."""
        self.epoch += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def epoch_id(self) -> list[Any]:
        return [self.incarnation, self.epoch]

    def lists(self) -> dict[str, list[Any]]:
        return {n: e.to_list() for n, e in self.table.items()}

    def view(self, now: float) -> dict[str, dict[str, int]]:
        """What each model serves at ``now`` (and what it switches to), for status reports."""
        return {n: {"version": e.serving(now), **({"next": e.next} if e.next is not None else {})}
                for n, e in sorted(self.table.items())}

    def busy(self, name: str) -> bool:
        """A switch of ``name`` is under way or announced."""
        entry = self.table.get(name)
        return name in self.switching or (entry is not None and entry.next is not None)

    def served(self) -> list[tuple[str, int]]:
        """(model, version) of every model served and not being switched."""
        return [(n, e.version) for n, e in list(self.table.items()) if not self.busy(n)]

    # -- replicas --------------------------------------------------------------------------
    def heard(self, replica: str) -> Replica:
        rep = self.replicas.setdefault(replica, Replica(seen=time.time()))
        rep.seen = time.time()
        return rep

    def live(self) -> dict[str, Replica]:
        now = time.time()
        for rid in [r for r, rep in self.replicas.items() if now - rep.seen > self.settings.replica_ttl_s * 4]:
            del self.replicas[rid]  # long gone
        return {r: rep for r, rep in self.replicas.items() if now - rep.seen <= self.settings.replica_ttl_s}

    def reported(self, name: str) -> int | None:
        """The version most live replicas say they serve (how a restarted controller learns it)."""
        counts = Counter(rep.serving[name] for rep in self.live().values() if name in rep.serving)
        return counts.most_common(1)[0][0] if counts else None

    async def follow(self, replica: str, epoch: list[Any] | None, serving: dict[str, int]) -> None:
        """A replica reports what it serves; returns once the table differs from ``epoch`` (or after ``hold_s``)."""
        rep = self.heard(replica)
        rep.serving = dict(serving)
        self._replica_news.set()
        if epoch == self.epoch_id():
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=self.settings.hold_s)
            except TimeoutError:
                pass
        rep.seen = time.time()

    def armed(self, replica: str, name: str, version: int) -> None:
        rep = self.heard(replica)
        rep.armed[(name, int(version))] = time.time()
        if len(rep.armed) > 256:
            rep.armed = {k: v for k, v in rep.armed.items() if k[0] in self.table}

    def ready(self, replica: str, name: str, version: int) -> None:
        rep = self.heard(replica)
        rep.ready.add((name, int(version)))
        if len(rep.ready) > 256:
            rep.ready = {k for k in rep.ready if k[0] in self.table}
        self._replica_news.set()

    def lead_s(self) -> float:
        """Lead time between announcing a switch instant and the instant: at least ``switch_delay_s``,
        and three times the slowest recent time a replica took to hear of one (a loaded replica's
        event loop answers late), capped at ``max_switch_delay_s``."""
        recent = max(self.arm_lags, default=0.0)
        return min(self.settings.max_switch_delay_s, max(self.settings.switch_delay_s, 3.0 * recent))

    # -- deciding, for each model, when its alias is read ----------------------------------
    async def follow_alias(self, name: str, champ: int) -> None:
        """The alias of ``name`` names ``champ``: switch to it unless that is under way or refused."""
        if not await self._supersede(name, champ):
            return
        entry = self._bootstrap(name)
        if self._wants_switch(name, entry, champ):
            self.begin(name, entry.version if entry else None, champ)

    async def _supersede(self, name: str, champ: int) -> bool:
        """A switch of ``name`` under way: withdraw it if the alias moved on before its instant. False
        while it must run on (it is to ``champ``, or past the point where it can be withdrawn)."""
        if name not in self.switching:
            return True
        rec = self._recs.get(name, {})
        if rec.get("to") == champ or "switched" in rec or "refused" in rec:
            return False  # under way, or past the point where it can be withdrawn: next poll
        task = self.switching[name]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if self.switching.get(name) is task:  # cancelled before it ran
            del self.switching[name]
            self._recs.pop(name, None)
        return True

    def _bootstrap(self, name: str) -> Entry | None:
        """The entry of ``name``; after a restart, what the replicas report they serve."""
        entry = self.table.get(name)
        if entry is None:
            current = self.reported(name)
            if current is not None:
                self.table[name] = entry = Entry(current)
                self.publish()
        return entry

    def _wants_switch(self, name: str, entry: Entry | None, champ: int) -> bool:
        if entry is not None and entry.version == champ:
            return False
        # refused already (the alias could not be moved back; logged): keep serving what serves
        return not self.admission.is_refused(name, champ)

    def begin(self, name: str, old: int | None, new: int) -> asyncio.Task:
        task = self.switching[name] = asyncio.get_running_loop().create_task(self._switch(name, old, new))
        return task

    async def wait(self, name: str, timeout: float) -> None:
        """Until the switch of ``name`` under way (if any) is done."""
        task = self.switching.get(name)
        if task is not None:
            await asyncio.wait_for(asyncio.shield(task), timeout=timeout)

    # -- the switch --------------------------------------------------------------------------
    async def _switch(self, name: str, old: int | None, new: int) -> None:
        rec: dict[str, Any] = {"name": name, "from": old, "to": new, "detected": time.time()}
        self._recs[name] = rec
        try:
            entry = await self._prepare(name, old, new, rec)
            if entry is None:
                return
            waiting = await self._make(name, entry, new, rec)
            await self._settle(name, old, new, rec, waiting)
        except asyncio.CancelledError:  # superseded by a later alias move before the instant
            rec["superseded"] = time.time()
            self._withdraw(name, new)
            raise
        except Exception as exc:  # noqa: BLE001 - a failed switch is retried at the next poll
            rec["error"] = short(exc)
            self._withdraw(name, new)
            raise
        finally:
            self.swaps.append(rec)
            if self.switching.get(name) is asyncio.current_task():
                del self.switching[name]
                self._recs.pop(name, None)

    async def _prepare(self, name: str, old: int | None, new: int, rec: dict[str, Any]) -> Entry | None:
        """Announce ``new`` and check it while replicas load it. The entry to switch, or None when there
        is nothing more to do (refused, or nothing served the model yet: it serves ``new`` at once)."""
        entry = self.table.get(name)
        if entry is not None:  # replicas start loading while the version is checked
            entry.next, entry.at = new, None
            self.publish()
        try:
            found = await self.admission.check(name, new)
        except UnknownNameError as exc:
            found = [str(exc)]
        rec["checked"] = time.time()
        if found:
            await self._refuse(name, old, new, found, rec)
            return None
        self.admission.admitted(name)
        if entry is None:  # nothing served it yet: replicas load it on first use
            self.table[name] = Entry(new)
            self.publish()
            rec.update(ready=time.time(), switched=time.time(), completed=time.time(), replicas=0)
            return None
        return entry

    async def _make(self, name: str, entry: Entry, new: int, rec: dict[str, Any]) -> list[str]:
        """Once every live replica is ready (or ``ready_timeout_s``), name the instant and reach it.
        The replicas that were not ready in time."""
        await self.until(lambda live: all((name, new) in rep.ready for rep in live.values()),
                         self.settings.ready_timeout_s)
        waiting = sorted(r for r, rep in self.live().items() if (name, new) not in rep.ready)
        rec["ready"] = time.time()
        rec["not_ready"] = waiting
        announced = time.time()
        entry.at = announced + self.lead_s()
        rec["switched"] = entry.at
        self.publish()
        await asyncio.sleep(max(0.0, entry.at - time.time()))
        # a replica that learnt the instant after it passed served the old version a little longer:
        # a client alternating between replicas could then see the old version again. The lead
        # time follows how long replicas take to hear (lead_s), and late ones are recorded.
        heard = {r: rep.armed.get((name, new)) for r, rep in self.live().items()}
        lags = [t - announced for t in heard.values() if t is not None]
        if lags:
            self.arm_lags.append(max(lags))
        rec["lead_s"] = round(entry.at - announced, 3)
        rec["arm_lag_s"] = round(max(lags), 3) if lags else None
        rec["late"] = sorted(r for r, t in heard.items() if t is None or t > entry.at)
        return waiting

    async def _settle(self, name: str, old: int | None, new: int, rec: dict[str, Any], waiting: list[str]) -> None:
        """The entry becomes ``new`` alone; once every replica serves it, the switch is recorded."""
        self.table[name] = Entry(new)
        self.publish()
        await self.until(lambda live: all(rep.serving.get(name) == new for rep in live.values()), 10.0)
        rec["completed"] = time.time()
        rec["replicas"] = len(self.live())
        took = rec["completed"] - rec["detected"]
        await asyncio.to_thread(
            audit.record, self.registry, audit.SERVE, name, new, actor=ACTOR, previous=old, mirror=False,
            reason=f"serving on every replica ({rec['replicas']}) {took:.2f}s after the controller saw the move"
                   + (f"; replicas not ready in time: {', '.join(waiting)}" if waiting else ""),
            metrics={"switch_s": took})

    async def _refuse(self, name: str, old: int | None, new: int, found: list[str], rec: dict[str, Any]) -> None:
        """``new`` must not serve: withdraw it from the table, archive it, move the alias back."""
        reason = Admission.reason(new, found)
        rec["refused"] = reason
        entry = self.table.get(name)
        if entry is not None and entry.next == new:
            entry.next, entry.at = None, None
            self.publish()
        await self.admission.refuse(name, old, new, reason)

    def _withdraw(self, name: str, new: int) -> None:
        """Take an announced version off the table before its switch instant."""
        entry = self.table.get(name)
        if entry is not None and entry.next == new and entry.at is None:
            entry.next = None
            self.publish()

    async def until(self, done: Callable[[dict[str, Replica]], bool], timeout: float) -> None:
        """Wait until ``done(live replicas)`` holds (checked whenever a replica reports) or ``timeout``."""
        deadline = time.time() + timeout
        while not done(self.live()) and time.time() < deadline:
            self._replica_news.clear()
            try:
                await asyncio.wait_for(self._replica_news.wait(), timeout=0.25)
            except TimeoutError:
                pass
