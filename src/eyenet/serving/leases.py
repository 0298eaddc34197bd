"""The series a router replica holds: their states kept here, written behind to the stream store.

A replica claims a series from the store once (one call, also for a batch of series), then scores
it from its own copy: a request costs no store call. Every ``write_behind_s`` one ``sync`` call
sends the states changed since the last one (a series that got many points in between is sent
once) and renews the replica's lease (:mod:`eyenet.serving.streams` has the store's side).

**Durability.** By default a point is acknowledged before its state reaches the store. If the
replica dies, at most ``write_behind_s`` of acknowledged points per series (plus a sync in flight)
are lost: the series' next point, on another replica, continues from the state last written
behind. With ``write_behind_s: 0`` a request is answered only once a sync holding its state has
been taken by the store (:meth:`OwnedStates.written`; the requests in progress share one sync call),
so no acknowledged point is lost with a replica, for one store round trip per request. (The store
itself writes to its database every ``flush_s``.) A replica that shuts down gracefully writes
everything behind first (:meth:`OwnedStates.close`, from the router's ``__del__``).

**A series moving.** The ingress hashes ``X-EyeNet-Series`` to a replica, so a series usually stays
on one. When another replica asks for it (a client without the header, a scale-up, a restart),
the store tells this one (:meth:`OwnedStates._wanted_loop`, a long poll): it takes the series'
lock, so a request in progress finishes first, then hands the newest state over in a sync. The
asker waits for that (a few milliseconds) and continues from it, so the points apply in order.
A series not handed over within ``lease_s + 1`` s (its holder stuck, or two batch requests on two
replicas each waiting for a series the other holds) is answered 503 with ``Retry-After``.

**A busy replica keeps its series.** Besides every claim and sync, a thread of the replica's own
renews its lease every ``lease_s / 4`` (:meth:`StoreLike.heartbeat_blocking`), so an event loop
kept busy for longer than ``lease_s`` (a flood of large batches) delays its writes behind but does
not lose its series to a lapsed lease; a series another replica asks for meanwhile is handed over
once the loop gets to it (or answered 503 after ``lease_s + 1`` s, as above).

**Not reaching the store.** The replica goes on scoring the series it holds until its lease would
lapse (``lease_s`` after the last call the store answered; the store counts from when it got that
call, so never earlier). After that it treats each held series as unconfirmed and claims it again
before scoring it: the store answers with its version and the replica keeps its own copy only when
nobody moved the series on meanwhile. A state written behind for a series that went elsewhere is
refused and dropped here (``eyenet_stream_state_moves_total{reason="lost"}``).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Protocol

from eyenet.core.model import StreamState
from eyenet.lifecycle.database import describe
from eyenet.monitoring import metrics as m
from eyenet.serving.settings import StoreSettings
from eyenet.serving.streams import Refusal, state_bytes

log = logging.getLogger(__name__)
#: how long the replica's ``wanted`` poll waits in the store before asking again
POLL_S = 5.0
#: states queued to leave (evicted, handed over) that make the sync loop run before its interval
LEAVING_KICK = 1_000
#: how long a replica takes a tenant the store found at its live-series quota to be still at it
#: (its new series refused here without a store call); at most the refusal's Retry-After
AT_QUOTA_S = 1.0
#: tenants a replica remembers at their quota at once (least recently refused dropped)
MAX_AT_QUOTA = 10_000


class StoreLike(Protocol):
    """The stream store as a router replica uses it (the actor, or a :class:`StreamStore` in-process)."""

    async def claim(self, owner: str, keys: list[str], lease_s: float, wait_s: float) -> list[tuple[int, Any]]: ...
    async def sync(self, owner: str, items: list[tuple[str, int, Any]], released: list[str],
                   lease_s: float) -> list[tuple[bool, int, Any]]: ...
    async def wanted(self, owner: str, timeout_s: float) -> list[str]: ...
    def heartbeat_blocking(self, owner: str, lease_s: float, timeout_s: float) -> None: ...
    async def delete(self, key: str, owner: str | None = None, lease_s: float | None = None) -> int: ...


def _heartbeat(owned: Any, stop: threading.Event, every_s: float) -> None:
    """The heartbeat thread of an :class:`OwnedStates` (a weak reference: it ends with it, or on ``stop``)."""
    while not stop.wait(every_s):
        held = owned()
        if held is None:
            return
        held.beat()
        del held


class OwnedStates:
    """The states of the series this replica holds (least recently used beyond ``max_states`` or
    ``max_bytes`` released to the store), their locks, and the loops that write them behind and hand
    them over. Every key is ``tenant/group/series``."""

    def __init__(self, store: StoreLike, owner: str, settings: StoreSettings | None = None, *,
                 max_states: int = 50_000, max_bytes: int = 1 << 30, on_leave: Any = None) -> None:
        s = settings or StoreSettings()
        self.store = store
        self.owner = owner
        self.write_behind_s = s.write_behind_s
        self.lease_s = s.lease_s
        self.interval_s = s.write_behind_s or s.lease_s / 4  # between syncs (they renew the lease too)
        self.max_states = max_states
        self.max_bytes = max_bytes
        self.on_leave = on_leave  # called with a key that leaves this replica (released, handed over, lost)
        self.states: OrderedDict[str, tuple[int, Any]] = OrderedDict()  # key -> (store version, state or None)
        self.sizes: dict[str, int] = {}  # key -> state_bytes of its held state (counted once)
        self.bytes = 0
        self.dirty: set[str] = set()  # changed since the last sync
        self.unconfirmed: set[str] = set()  # held before the lease lapsed: claimed again before use
        self.leaving: dict[str, tuple[int, Any, bool]] = {}  # key -> (version, state, changed): released next sync
        self.valid_until = 0.0  # monotonic: until then the store keeps this replica's series for it
        self.synced = self.lost = self.handed_over = self.failures = 0
        self.at_quota: OrderedDict[str, tuple[float, Refusal]] = OrderedDict()  # tenant -> (until, refusal)
        self.refused_here = 0  # new series refused from at_quota, without asking the store
        self.error: str | None = None  # the last sync's error, None once one succeeds
        self._locks: dict[str, list[Any]] = {}  # key -> [lock, requests holding or awaiting it]
        self._sync_lock = asyncio.Lock()
        self._started = self._completed = 0  # syncs begun, and the number of the last that succeeded
        self._kick: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._closed = False
        self._beating: threading.Event | None = None  # set: the heartbeat thread stops
        self.heartbeats = self.heartbeat_failures = 0

    # -- the request path ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def holding(self, keys: list[str]) -> AsyncIterator[None]:
        """The locks of these series, in sorted order so two requests never wait on each other: one
        request (or hand-over) of a series at a time in this replica, so its points apply in order."""
        entries, held = [], 0
        try:
            for key in sorted(set(keys)):
                entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
                entry[1] += 1
                entries.append((key, entry))
                await entry[0].acquire()
                held += 1
            yield
        finally:
            for n, (key, entry) in enumerate(entries):
                if n < held:
                    entry[0].release()
                entry[1] -= 1
                if entry[1] == 0:
                    self._locks.pop(key, None)

    def missing(self, keys: list[str]) -> int:
        """How many of ``keys`` :meth:`acquire` would ask the store for (not held here, or unconfirmed)."""
        return sum(1 for k in keys if k not in self.states or k in self.unconfirmed)

    def quota_refusal(self, tenant: str) -> Refusal | None:
        """The store's refusal of ``tenant``'s new series when it answered one in the last
        :data:`AT_QUOTA_S` (the tenant at its live-series quota), else None. Series of that tenant
        this replica does not hold get it from :meth:`acquire` without a store call: a tenant sending
        new ids past its quota costs the store nothing and a replica little. A slot the tenant frees
        meanwhile (a reset, an idle series expiring) is seen at most that much later."""
        hit = self.at_quota.get(tenant)
        if hit is None:
            return None
        if hit[0] <= time.monotonic():
            del self.at_quota[tenant]
            return None
        return hit[1]

    def refuse_new(self, tenant: str, keys: list[str]) -> Refusal | None:
        """:meth:`quota_refusal` for a request of only new series (none of ``keys`` held here), counted
        as refused; None when the tenant is not known at its quota or one of the series is held."""
        refusal = self.quota_refusal(tenant)
        if refusal is None or any(k in self.states for k in keys):
            return None
        self.refused_here += len(keys)
        m.QUOTA_REFUSED.labels("series").inc(len(keys))
        return refusal

    def _remember_quota(self, refusal: Refusal) -> None:
        tenant, now = refusal.tenant, time.monotonic()
        if tenant is None or self.at_quota.get(tenant, (0.0,))[0] > now:
            return
        self.at_quota[tenant] = (now + min(AT_QUOTA_S, refusal.retry_after_s), refusal)
        self.at_quota.move_to_end(tenant)
        while len(self.at_quota) > MAX_AT_QUOTA:
            self.at_quota.popitem(last=False)

    async def acquire(self, keys: list[str]) -> dict[str, tuple[int, Any] | Refusal]:
        """Per key ``(version, state)`` (state None: a new series, or one reset) or the store's
        :class:`Refusal`; from this replica's copy when it holds the series, else claimed in one store
        call. Call it holding the keys' locks."""
        self.start()
        now = time.monotonic()
        if now >= self.valid_until and self.states:
            self.unconfirmed.update(self.states)  # the store may have given them away meanwhile
        out: dict[str, tuple[int, Any] | Refusal] = {}
        ask = []
        for key in keys:
            hit = self.states.get(key)
            if hit is not None and key not in self.unconfirmed:
                self.states.move_to_end(key)
                out[key] = hit
            else:
                ask.append(key)
        if ask and self.at_quota:  # new series of a tenant at its quota: refused here
            refused = {k: r for k in ask if k not in self.states
                       and (r := self.quota_refusal(k.split("/", 1)[0])) is not None}
            if refused:
                out.update(refused)
                ask = [k for k in ask if k not in refused]
                self.refused_here += len(refused)
                m.QUOTA_REFUSED.labels("series").inc(len(refused))
        if not ask:
            return out
        if any(k in self.leaving for k in ask):  # handed over a moment ago: let that sync go first
            await self.sync()
        sent = time.monotonic()
        answers = await self.store.claim(self.owner, ask, self.lease_s, self.lease_s + 1.0)
        self.valid_until = max(self.valid_until, sent + self.lease_s)
        for key, (version, got) in zip(ask, answers):
            self.unconfirmed.discard(key)
            if isinstance(got, Refusal):
                self._drop(key)
                out[key] = got
                self._remember_quota(got)
                continue
            mine = self.states.get(key)
            if mine is not None and mine[0] >= version:  # nobody moved it on: our copy is the newest
                out[key] = mine
                continue
            state = got
            if isinstance(got, bytes):
                try:
                    state = StreamState.from_bytes(got)
                except (ValueError, KeyError, TypeError):
                    log.warning("stream state of %s is unreadable; the series starts afresh", key)
                    state = None
            self._drop(key)
            self._keep(key, version, state)
            out[key] = (version, state)
        return out

    def put(self, key: str, version: int, state: Any) -> None:
        """The series' new state, computed from what :meth:`acquire` gave (at ``version``): kept, and
        written behind at the next sync. The base of that write is the held entry's version, which a
        sync during the request may have moved on."""
        if key in self.states:
            version = self.states[key][0]
        elif key in self.leaving:  # evicted by this very request's batch
            version = self.leaving.pop(key)[0]
        self._drop(key)
        self._keep(key, version, state)
        self.dirty.add(key)

    async def reset(self, key: str) -> int:
        """Forget the series' state (in the store too, at once); this replica holds it, empty. A series
        another replica holds is handed over first, so that one cannot go on from its old copy."""
        await self.acquire([key])  # a refusal (a new series past a cap) does not matter: nothing to forget
        sent = time.monotonic()
        version = await self.store.delete(key, self.owner, self.lease_s)
        self.valid_until = max(self.valid_until, sent + self.lease_s)
        self.leaving.pop(key, None)
        self._drop(key)
        self.unconfirmed.discard(key)
        self._keep(key, version, None)
        return version

    # -- bookkeeping --------------------------------------------------------------------------------
    def _keep(self, key: str, version: int, state: Any) -> None:
        self.states[key] = (version, state)
        size = self.sizes[key] = state_bytes(key, state)
        self.bytes += size
        while len(self.states) > 1 and (len(self.states) > self.max_states or self.bytes > self.max_bytes):
            old, (v, st) = self.states.popitem(last=False)
            self.bytes -= self.sizes.pop(old)
            self.leaving[old] = (v, st, old in self.dirty)
            self.dirty.discard(old)
            self.unconfirmed.discard(old)
            m.EVICTIONS.labels("router_streams").inc()
            m.STATE_MOVES.labels("released").inc()
            self._left(old)
        if len(self.leaving) >= LEAVING_KICK and self._kick is not None:
            self._kick.set()

    def _left(self, key: str) -> None:
        if self.on_leave is not None:
            self.on_leave(key)

    def _drop(self, key: str) -> tuple[int, Any, bool] | None:
        """Stop holding ``key`` here: its ``(version, state, changed since the last sync)``, or None."""
        old = self.states.pop(key, None)
        changed = key in self.dirty
        self.dirty.discard(key)
        if old is None:
            return None
        self.bytes -= self.sizes.pop(key)
        return old[0], old[1], changed

    # -- writing behind ------------------------------------------------------------------------------
    async def sync(self) -> int:
        """Send the changed states and the released keys now (renewing the lease); how many states
        were taken. On failure everything stays queued for the next attempt and the error is raised."""
        async with self._sync_lock:
            return await self._sync()

    async def written(self) -> None:
        """With ``write_behind_s: 0``: return once the states :meth:`put` before this call are in the
        store (one sync for every request waiting meanwhile); raise what that sync raised. Otherwise
        at once."""
        if self.write_behind_s:
            return
        need = self._started + 1  # the first sync to begin after the put carries its state
        async with self._sync_lock:
            if self._completed < need:
                await self._sync()

    async def _sync(self) -> int:
        self._started += 1
        number = self._started
        changed = list(self.dirty)
        leaving, self.leaving = self.leaving, {}
        items = [(k, *self.states[k]) for k in changed]
        items += [(k, v, st) for k, (v, st, was_changed) in leaving.items() if was_changed and st is not None]
        released = list(leaving)
        self.dirty = set()
        sent = time.monotonic()
        try:
            answers = await self.store.sync(self.owner, items, released, self.lease_s)
        except BaseException as exc:
            self.dirty.update(k for k in changed if k in self.states)
            leaving.update(self.leaving)  # released meanwhile: newer
            self.leaving = leaving
            if isinstance(exc, Exception):
                self.failures += 1
                self.error = f"{type(exc).__name__}: {describe(exc)}"
            raise
        self.valid_until = sent + self.lease_s
        self.failures, self.error = 0, None
        self._completed = number
        for (key, base, _), (ok, now, refusal) in zip(items, answers):
            held = self.states.get(key)
            if key in leaving or held is None or held[0] != base:  # gone, or reset or claimed anew meanwhile
                continue
            if ok:
                self.states[key] = (now, held[1])  # the base of its next write (it may have moved on since)
                self.unconfirmed.discard(key)
            else:  # another replica has it now, or it was reset, or the store is full: not ours any more
                self._drop(key)
                self.lost += 1
                m.STATE_MOVES.labels("lost").inc()
                self._left(key)
                log.info("stream state of %s not written behind (%s); dropped here", key,
                         refusal.reason if refusal is not None else "held elsewhere now")
        self.synced += len(items)
        return len(items)

    def start(self) -> None:
        """Run the write-behind and hand-over loops (on the running event loop; again after it changed)."""
        if self._closed or (self._tasks and not any(t.done() for t in self._tasks)):
            return
        for t in self._tasks:
            t.cancel()
        self._kick = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sync_loop()), loop.create_task(self._wanted_loop())]
        if self._beating is None and hasattr(self.store, "heartbeat_blocking"):
            self._beating = threading.Event()
            threading.Thread(target=_heartbeat, args=(weakref.ref(self), self._beating, self.lease_s / 4),
                             name=f"lease-{self.owner}", daemon=True).start()

    def beat(self) -> None:
        """Renew the lease now if series are held (the heartbeat thread's call; any thread)."""
        if not self.states:
            return
        sent = time.monotonic()
        try:
            self.store.heartbeat_blocking(self.owner, self.lease_s, self.lease_s / 2)
        except Exception as exc:  # noqa: BLE001 - the store away: the syncs' own retries report it
            self.heartbeat_failures += 1
            log.debug("lease heartbeat failed: %s", exc)
            return
        self.heartbeats += 1
        self.valid_until = max(self.valid_until, sent + self.lease_s)  # a float: atomic in CPython

    async def _sync_loop(self) -> None:
        kick = self._kick
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(kick.wait(), timeout=self.interval_s * (1 + min(self.failures, 4)))
            kick.clear()
            if not (self.dirty or self.leaving) and (not self.states or time.monotonic() < self.valid_until
                                                     - 0.75 * self.lease_s):
                continue  # nothing to write, and the lease is fresh (or nothing held): no call
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - kept in self.error (healthz); the loop goes on and retries
                m.ERRORS.labels("store_write").inc()
                log.warning("writing %d stream states behind failed (%s); retrying", len(self.dirty), self.error)

    async def _wanted_loop(self) -> None:
        """Hand over the series other replicas ask for: each once its request in progress is done."""
        delay = 0.05
        while True:
            try:
                keys = await self.store.wanted(self.owner, POLL_S)
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - store away: ask again shortly
                log.debug("wanted poll failed: %s", exc)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 2.0)
                continue
            for key in keys:
                async with self.holding([key]):
                    held = self._drop(key)
                    if held is not None:
                        self.leaving[key] = held  # its newest state goes with it when it changed
                        self.handed_over += 1
                        m.STATE_MOVES.labels("handed_over").inc()
                        self._left(key)
                    elif key not in self.leaving:
                        self.leaving[key] = (0, None, False)  # not held: just let go
                    self.unconfirmed.discard(key)
            if keys and self._kick is not None:
                self._kick.set()

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop the loops and write everything behind, releasing every series (a graceful shutdown)."""
        self._closed = True
        if self._beating is not None:
            self._beating.set()
        for t in self._tasks:
            t.cancel()
        self._tasks = []
        for key in list(self.states):
            self.leaving[key] = self._drop(key)
        self.unconfirmed.clear()
        try:
            await asyncio.wait_for(self.sync(), timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - the store away at shutdown: these points are lost
            log.warning("stream states not written behind at shutdown (%d series): %s", len(self.leaving),
                        describe(exc))

    def stats(self) -> dict[str, Any]:
        """Sizes and counters (``/healthz``)."""
        return {"held": len(self.states), "max_held": self.max_states, "bytes": self.bytes,
                "max_bytes": self.max_bytes, "dirty": len(self.dirty), "leaving": len(self.leaving),
                "lease_left_s": round(max(0.0, self.valid_until - time.monotonic()), 3),
                "synced": self.synced, "handed_over": self.handed_over, "lost": self.lost,
                "heartbeats": self.heartbeats, "heartbeat_failures": self.heartbeat_failures,
                "failures": self.failures, "error": self.error,
                "tenants_at_quota": len(self.at_quota), "refused_here": self.refused_here}
