"""Per-series stream states with optimistic versions and leases, persisted to SQLite or PostgreSQL.

Versions make concurrent writers safe without locks: a writer ``commit``\\ s the
state it computed from version ``v``. The store accepts it when its own version
is still ``v`` and answers with its newer state otherwise, so the writer can
score again from that. A commit from a version *ahead* of the store's is
accepted too: the store lost updates (it restarted from a snapshot a moment
old) and the writer's copy descends from a newer state than anything it has.
Deleting leaves a tombstone with a higher version, so a writer's stale copy
cannot bring a reset stream back.

**Leases** (:mod:`eyenet.serving.leases` is the other side): a router replica that serves a series
``claim``\\ s it once and from then on scores it from its own copy, writing the states it changed
behind in one ``sync`` call every ``write_behind_s`` (the call also renews the replica's lease for
``lease_s``). A replica that is asked for a series another live replica holds waits here while the
holder is told (``wanted``, a long poll each replica keeps open) and hands the series over with its
newest state; a holder that stopped renewing loses its series when its lease lapses. A sync of a
series that meanwhile went to another replica (or was reset) is refused, and the sender drops it.
The store accepts states as :meth:`~eyenet.core.model.StreamState.to_bytes` and keeps them so:
it never decodes a state it only stores and writes.

The store keeps every state in memory and writes only the ones that changed,
as compact binary rows (:meth:`eyenet.core.model.StreamState.to_bytes`), so a
snapshot costs in proportion to the traffic since the last one, not to the
number of series. States idle longer than ``ttl_s`` are forgotten.

Where the rows go is ``state_uri`` (:mod:`eyenet.serving.snapshots`): a folder holds the embedded
SQLite file ``streams.db`` (one machine), a ``postgresql://`` URI a table in that database (a
cluster, whose store actor may restart on another node). The logic here is the same on both.

Bounds (:class:`~eyenet.serving.settings.StoreSettings`, :class:`~eyenet.serving.settings.QuotaSettings`):

- **live series per tenant** (``quota.max_series_per_tenant``, app-wide since there is one
  store): a commit that would create a tenant's series beyond its quota is refused with a
  :class:`Refusal` (the pipeline answers 429 with ``Retry-After``);
- **series and bytes in memory** (``max_series``, ``max_bytes``, an estimate of the states'
  arrays): a new series beyond either evicts the least recently used series idle for at least
  ``min_idle_s`` (counted, ``eyenet_evictions_total{structure="store"}``; its row is deleted
  too, so the file stays bounded); when even the least recently used one is busy the new
  series is refused (429), never the process killed for memory;
- **reload after a restart**: at most ``reload_max_series`` rows, newest first, for at most
  ``reload_max_s`` seconds; the older rows are dropped (counted, and deleted at the next write).

Reliability: a snapshot that fails to write (disk full, database locked, read-only, the PostgreSQL
server unreachable or restarting) leaves its keys dirty for the next attempt; the error is kept and
reported by :meth:`StreamStore.health` (``/healthz`` says degraded with the reason) and the flusher
goes on retrying with backoff, on a new connection once the server is back.
:meth:`StreamStore.close` writes what is left (``eyenet down`` calls it before stopping Ray).
A database another process holds locked, or a server that cannot be reached, at start-up is
retried with backoff for ``open_timeout_s``; only a SQLite file that is not a database is moved aside.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eyenet.core.model import StreamState
from eyenet.lifecycle.database import describe
from eyenet.monitoring import metrics as m
from eyenet.serving.settings import QuotaSettings, StoreSettings
from eyenet.serving.snapshots import open_snapshots

log = logging.getLogger(__name__)
#: what a state costs in memory besides its arrays (objects, dict entry, key), for the byte estimate
STATE_OVERHEAD = 600


def state_bytes(key: str, state: StreamState | bytes | None) -> int:
    """Estimated memory of one stored state (its arrays, or its encoding, and a fixed overhead)."""
    if state is None:
        return STATE_OVERHEAD // 2 + len(key)
    if isinstance(state, bytes):
        return STATE_OVERHEAD + len(key) + len(state)
    arrays = state.values.nbytes + state.ranks.nbytes + sum(h.nbytes for h in state.scores)
    return STATE_OVERHEAD + len(key) + arrays


def tenant_of(key: str) -> str:
    return key.split("/", 1)[0]


@dataclass(frozen=True)
class Refusal:
    """The store's answer to a commit or claim it will not take: 429 (a tenant at its quota, the store
    full) or 503 (another replica holds the series and did not hand it over in time)."""

    reason: str
    retry_after_s: float
    status: int = 429
    tenant: str | None = None  # set when the tenant is at its live-series quota (not the store full)


class Streams:
    """In-memory states keyed by ``tenant/group/series``, persisted incrementally to ``state_uri``
    (a folder: ``<folder>/streams.db``; or a ``postgresql://`` URI; see :mod:`eyenet.serving.snapshots`)."""

    def __init__(self, state_uri: str | Path, *, ttl_s: float | None = None, settings: StoreSettings | None = None,
                 quota: QuotaSettings | None = None, clock: Any = time.time) -> None:
        self.settings = settings or StoreSettings()
        self.quota = quota or QuotaSettings()
        self.clock = clock
        self.snapshots = open_snapshots(state_uri)
        self.path = self.snapshots.path  # the SQLite file (None on PostgreSQL)
        self.ttl_s = self.settings.ttl_s if ttl_s is None else ttl_s
        # key -> (version, state or None for a tombstone, touched); least recently used first
        self.states: OrderedDict[str, tuple[int, StreamState | None, float]] = OrderedDict()
        self.dirty: set[str] = set()
        self.bytes = 0  # estimated memory of the states
        self.live: dict[str, int] = {}  # tenant -> series with a state (tombstones not counted)
        self.unreadable = 0  # rows skipped at load (a corrupt row restarts that stream; the others load)
        self.evicted = 0  # series dropped for the memory caps
        self.refused = 0  # new series refused (tenant quota, or the store full of busy series)
        self.reload_dropped = 0  # rows not loaded at start-up (over reload_max_series / reload_max_s)
        self.moved_aside: str | None = None  # where a damaged SQLite file went at start-up
        self._prune_before: float | None = None  # rows older than this are dropped at the next write
        self.owner_of: dict[str, str] = {}  # key -> the replica that holds it (while that one's lease lasts)
        self.alive: dict[str, float] = {}  # replica -> when its lease lapses (clock time)
        self.reserved: dict[str, str] = {}  # new series claimed, not written yet -> replica (counted in the caps)
        self._reserved_per: dict[str, int] = {}  # tenant -> its reserved series
        self._swept_at = float("-inf")  # when reservations of lapsed replicas were last looked for
        self._caps: dict[str, int | None] = {}  # tenant -> its live-series quota
        self._load()

    # -- bookkeeping -------------------------------------------------------------------------------
    def _put(self, key: str, version: int, state: StreamState | None, touched: float) -> None:
        old = self.states.get(key)
        if old is not None:
            self.bytes -= state_bytes(key, old[1])
            if old[1] is not None:
                self._live(key, -1)
        self.states[key] = (version, state, touched)
        self.states.move_to_end(key)
        self.bytes += state_bytes(key, state)
        if state is not None:
            self._live(key, +1)

    def _forget(self, key: str) -> None:
        self.owner_of.pop(key, None)
        self._unreserve(key)
        _, state, _ = self.states.pop(key)
        self.bytes -= state_bytes(key, state)
        if state is not None:
            self._live(key, -1)

    def _live(self, key: str, n: int) -> None:
        t = tenant_of(key)
        c = self.live.get(t, 0) + n
        if c > 0:
            self.live[t] = c
        else:
            self.live.pop(t, None)

    def _load(self) -> None:
        """The newest rows, within ``reload_max_series`` and ``reload_max_s``. A locked database or
        an unreachable server is retried with backoff (``open_timeout_s`` in all, then the error is
        raised: the actor restarts); a SQLite file that is not a database is moved aside and the
        store starts empty."""
        s, snaps = self.settings, self.snapshots
        deadline = time.monotonic() + s.open_timeout_s
        delay = 0.05
        while True:
            try:
                self._read()
                return
            except Exception as exc:
                if snaps.retryable(exc):  # locked, busy, unreachable: never move anything aside
                    if time.monotonic() + delay > deadline:
                        raise snaps.give_up(exc)  # noqa: B904 - the SQLite error itself, or one naming the server
                    log.warning("stream store: %s at start-up (%s); retrying in %.2f s", snaps.where,
                                describe(exc), delay)
                    time.sleep(delay)
                    delay = min(2 * delay, 2.0)
                    continue
                if not snaps.damaged(exc):
                    raise
                # not a database (a damaged file): keep it aside for inspection and start afresh
                aside = snaps.move_aside()
                log.error("stream store: %s is not readable (%s); moved to %s", snaps.where, describe(exc), aside)
                self.moved_aside = aside
                self.states.clear()
                self.live.clear()
                self.bytes = 0
                return

    def _read(self) -> None:
        s = self.settings
        self.states.clear()
        self.live.clear()
        self.bytes = 0
        self.unreadable = self.reload_dropped = 0
        t0 = time.monotonic()
        with self.snapshots.read(timeout=min(1.0, s.open_timeout_s)) as (total, rows):
            loaded = []
            last_touched = None
            for key, version, touched, blob in rows:
                if len(loaded) >= s.reload_max_series or time.monotonic() - t0 > s.reload_max_s \
                        or self.bytes > s.max_bytes:
                    break
                try:
                    state = None if blob is None else StreamState.from_bytes(bytes(blob))
                except (ValueError, KeyError, TypeError):
                    self.unreadable += 1
                    continue
                loaded.append((key, int(version), state, float(touched)))
                self.bytes += state_bytes(key, state)
                last_touched = float(touched)
        self.bytes = 0
        for key, version, state, touched in reversed(loaded):  # oldest first: the LRU order
            self._put(key, version, state, touched)
        self.reload_dropped = max(0, total - len(loaded) - self.unreadable)
        if self.reload_dropped:
            m.EVICTIONS.labels("store_reload").inc(self.reload_dropped)
            self._prune_before = last_touched if last_touched is not None else float("inf")
            log.warning("stream store: loaded the newest %d of %d series in %.1f s; %d older ones dropped",
                        len(loaded), total, time.monotonic() - t0, self.reload_dropped)

    # -- the API the store actor exposes ------------------------------------------------------
    def get(self, key: str) -> tuple[int, StreamState | None]:
        version, state, _ = self.states.get(key, (0, None, 0.0))
        return version, state

    def commit(self, key: str, version: int, state: StreamState) -> tuple[bool, int, StreamState | Refusal | None]:
        """Store ``state`` (computed from ``version``) as ``version + 1``; ``(accepted, version now,
        the store's newer state when refused)``. A new series over a cap: ``(False, -1, Refusal)``."""
        entry = self.states.get(key)
        current, stored = (entry[0], entry[1]) if entry is not None else (0, None)
        if version < current:
            return False, current, stored
        self._unreserve(key)  # its claim's reservation becomes the series
        if stored is None:  # a new live series (or one coming back from a reset)
            refusal = self._admit(key, entry is None, state)
            if refusal is not None:
                self.refused += 1
                return False, -1, refusal
        self._put(key, version + 1, state, self.clock())
        self.dirty.add(key)
        if self.bytes > self.settings.max_bytes:  # an existing series grew: make room behind it
            self._evict(keep=key)
        return True, version + 1, None

    def get_many(self, keys: list[str]) -> list[tuple[int, StreamState | None]]:
        return [self.get(k) for k in keys]

    def commit_many(self, items: list[tuple[str, int, StreamState]]) -> list[tuple[bool, int, Any]]:
        """:meth:`commit` of each ``(key, version, state)``, in order (one call for a batch of series)."""
        return [self.commit(k, v, st) for k, v, st in items]

    # -- leases (see the module docstring) ------------------------------------------------------------
    def renew(self, owner: str, lease_s: float) -> None:
        """``owner`` is alive for ``lease_s`` more seconds (every claim and sync renews it)."""
        now = self.clock()
        self.alive[owner] = now + lease_s
        if len(self.alive) > 64:  # replicas come and go: forget those gone for long
            self.alive = {o: t for o, t in self.alive.items() if t > now - 3600}

    def holder(self, key: str) -> str | None:
        """The replica holding ``key`` now: None when nobody does or its lease has lapsed."""
        owner = self.owner_of.get(key)
        if owner is None or self.alive.get(owner, 0.0) <= self.clock():
            return None
        return owner

    def claim(self, key: str, owner: str) -> tuple[int, StreamState | bytes | Refusal | None]:
        """Give ``key`` to ``owner`` (the caller checked nobody else holds it): ``(version, state)``, the
        state None for a series not stored; a new series over a cap gets ``(-1, Refusal)`` instead."""
        entry = self.states.get(key)
        if (entry is None or entry[1] is None) and key not in self.reserved:
            refusal = self._admit(key, entry is None, None)
            if refusal is not None:
                self.refused += 1
                return -1, refusal
            self.reserved[key] = owner  # until its first state is written, or it is let go
            t = tenant_of(key)
            self._reserved_per[t] = self._reserved_per.get(t, 0) + 1
        elif key in self.reserved:
            self.reserved[key] = owner
        self.owner_of[key] = owner
        return (entry[0], entry[1]) if entry is not None else (0, None)

    def sync(self, owner: str, items: list[tuple[str, int, Any]], released: list[str] = ()) \
            -> list[tuple[bool, int, Refusal | None]]:
        """The states ``owner`` changed, each ``(key, version it was computed from, state)``:
        committed unless another live replica holds the key now (it was handed over, or reset), and
        ``released`` keys let go. Per item ``(accepted, version now, Refusal or None)``."""
        out = []
        for key, version, state in items:
            other = self.holder(key)
            if other is not None and other != owner:
                out.append((False, self.states.get(key, (0, None, 0.0))[0], None))
                continue
            ok, now, stored = self.commit(key, version, state)
            if ok:
                self.owner_of[key] = owner
            out.append((ok, now, stored if isinstance(stored, Refusal) else None))
        for key in released:
            if self.owner_of.get(key) == owner:
                del self.owner_of[key]
                self._unreserve(key)
        return out

    def _unreserve(self, key: str) -> None:
        if self.reserved.pop(key, None) is not None:
            t = tenant_of(key)
            n = self._reserved_per[t] - 1
            if n:
                self._reserved_per[t] = n
            else:
                del self._reserved_per[t]

    def _reservations(self, tenant: str | None = None) -> int:
        """Reserved series (of ``tenant``), after dropping those of replicas whose leases lapsed (looked
        for at most every 50 ms: a batch of refused new series asks once per series)."""
        now = self.clock()
        if not 0 <= now - self._swept_at < 0.05:
            self._swept_at = now
            for key in [k for k, o in self.reserved.items() if self.alive.get(o, 0.0) <= now]:
                self._unreserve(key)
        return len(self.reserved) if tenant is None else self._reserved_per.get(tenant, 0)

    def _admit(self, key: str, new_key: bool, state: StreamState | bytes | None) -> Refusal | None:
        """None when ``key`` may become a live series (evicting idle ones to make room), else why not."""
        tenant = tenant_of(key)
        cap = self._caps.get(tenant, -1)
        if cap == -1:  # the quota settings do not change: worked out once per tenant (bounded)
            cap = self.quota.of(tenant).max_series
            if len(self._caps) < 10_000:
                self._caps[tenant] = cap
        if cap is not None and self.live.get(tenant, 0) + self._reserved_per.get(tenant, 0) >= cap \
                and self.live.get(tenant, 0) + self._reservations(tenant) >= cap:
            m.QUOTA_REFUSED.labels("series").inc()
            return Refusal(f"tenant {tenant!r}: at its quota of {cap} live series; reset or let idle series "
                           f"expire before starting new ones", self.quota.retry_after_s, tenant=tenant)
        s = self.settings
        need = state_bytes(key, state)
        extra = (1 if new_key else 0) + len(self.reserved)  # claimed new series count as stored ones
        if (len(self.states) + extra > s.max_series or self.bytes + need > s.max_bytes) \
                and not self._evict(keep=key, extra_series=extra, extra_bytes=need):
            m.QUOTA_REFUSED.labels("store_full").inc()
            return Refusal(f"the stream store is full ({len(self.states)} series, ~{self.bytes >> 20} MiB) of "
                           f"series active in the last {s.min_idle_s:g} s", max(self.quota.retry_after_s, 1.0))
        return None

    def _evict(self, keep: str, extra_series: int = 0, extra_bytes: int = 0) -> bool:
        """Drop least recently used series idle for ``min_idle_s`` until the caps hold with room for
        ``extra_*``; False when they cannot be made to hold."""
        s = self.settings
        now = self.clock()
        while len(self.states) + extra_series > s.max_series or self.bytes + extra_bytes > s.max_bytes:
            oldest = next((k for k in self.states if k != keep), None)
            if oldest is None or now - self.states[oldest][2] < s.min_idle_s:
                return False
            self._forget(oldest)
            self.dirty.add(oldest)  # deleted from the file at the next write
            self.evicted += 1
            m.EVICTIONS.labels("store").inc()
        return True

    def delete(self, key: str, owner: str | None = None) -> int:
        """Forget a stream's state; returns the tombstone's version (the next commit's base). With
        ``owner``, that replica holds the series from now on (a holder before it loses it)."""
        current = self.states.get(key, (0, None, 0.0))[0]
        self._put(key, current + 1, None, self.clock())
        self.dirty.add(key)
        if owner is not None:
            self.owner_of[key] = owner
        return current + 1

    def count(self) -> int:
        return sum(self.live.values())

    def stats(self) -> dict[str, Any]:
        """Sizes and counters of the bounded structures (``/healthz``)."""
        s = self.settings
        return {"series": self.count(), "entries": len(self.states), "reserved": len(self.reserved),
                "holders": sum(1 for t in self.alive.values() if t > self.clock()), "max_series": s.max_series,
                "bytes": self.bytes, "max_bytes": s.max_bytes, "tenants": len(self.live),
                "evicted": self.evicted, "refused": self.refused, "reload_dropped": self.reload_dropped,
                "unreadable": self.unreadable, "moved_aside": self.moved_aside, "backend": self.snapshots.where}

    # -- persistence ------------------------------------------------------------------------------
    def take_dirty(self) -> list[tuple[str, int, float, StreamState | None]]:
        """The changed states since the last call (states are never mutated, only replaced, so the
        batch can be written from another thread), and the expired or evicted ones as deletions
        (version -1)."""
        now = self.clock()
        # least recently used first: the expired ones are at the front
        for key in list(self.states):
            if now - self.states[key][2] <= self.ttl_s:
                break
            self._forget(key)
            self.dirty.add(key)
        batch = []
        for key in self.dirty:
            if key in self.states:
                version, state, touched = self.states[key]
                batch.append((key, version, touched, state))
            else:
                batch.append((key, -1, now, None))
        self.dirty = set()
        return batch

    def requeue(self, batch: list[tuple[str, int, float, StreamState | None]]) -> None:
        """Mark the keys of a batch that failed to write dirty again (the next write takes their
        state as of then)."""
        self.dirty.update(k for k, _, _, _ in batch)

    def write(self, batch: list[tuple[str, int, float, StreamState | None]]) -> None:
        """Write a batch of :meth:`take_dirty` in one transaction: changed states and tombstones
        upserted, expired and evicted keys deleted, and the rows not reloaded after a restart pruned."""
        rows = [(k, v, t, None if s is None else s if isinstance(s, bytes) else s.to_bytes())
                for k, v, t, s in batch if v >= 0]
        gone = [k for k, v, _, _ in batch if v < 0]
        self.snapshots.write(rows, gone, self._prune_before)
        self._prune_before = None

    def flush(self) -> int:
        """Write the changed states now (raising what the write raised, the keys still dirty)."""
        batch = self.take_dirty()
        if batch or self._prune_before is not None:
            try:
                self.write(batch)
            except BaseException:
                self.requeue(batch)
                raise
        return len(batch)


class StreamStore:
    """The actor around :class:`~eyenet.serving.streams.Streams`: snapshots in a thread, off the event
    loop, retried after a failure (see the module docstring)."""

    def __init__(self, state_uri: str, interval_s: float | None = None, ttl_s: float | None = None,
                 settings: StoreSettings | dict[str, Any] | None = None,
                 quota: QuotaSettings | dict[str, Any] | None = None) -> None:
        # over Ray the settings come as dicts (model_dump()); unknown keys are an error
        s = settings if isinstance(settings, StoreSettings) else StoreSettings.model_validate(settings or {})
        q = quota if isinstance(quota, QuotaSettings) else QuotaSettings.model_validate(quota or {})
        self.streams = Streams(state_uri, ttl_s=ttl_s, settings=s, quota=q)
        self.interval_s = s.flush_s if interval_s is None else interval_s
        self.max_backoff_s = max(self.interval_s, s.max_backoff_s)
        self.error: str | None = None  # the last write's error, None once a write succeeds again
        self.error_at: float | None = None
        self.failures = 0  # consecutive failed writes
        self.written = 0
        self._writing: set[str] = set()  # keys of the batch being written now (still waiting, for health)
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._waiting: list[asyncio.Future] = []  # claims waiting for a holder to sync, release or lapse
        self._wants: dict[str, set[str]] = {}  # replica -> keys other replicas wait for from it
        self._asked: dict[str, list[asyncio.Future]] = {}  # replica -> its wanted() poll waiting

    def _start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._flusher())

    async def _flusher(self) -> None:
        while True:
            delay = self.interval_s if not self.failures else min(self.max_backoff_s,
                                                                  self.interval_s * 2 ** self.failures)
            await asyncio.sleep(delay)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - recorded by flush; the loop goes on and retries
                pass

    async def flush(self) -> int:
        """Write the changed states now; returns how many. On failure the keys stay dirty, the error
        is kept for :meth:`health` and raised."""
        async with self._lock:
            batch = self.streams.take_dirty()
            if not batch and self.streams._prune_before is None:
                return 0
            self._writing = {k for k, _, _, _ in batch}
            try:
                await asyncio.to_thread(self.streams.write, batch)
            except Exception as exc:
                self.streams.requeue(batch)
                self.failures += 1
                self.error, self.error_at = f"{type(exc).__name__}: {describe(exc)}", time.time()
                m.ERRORS.labels("store_write").inc()
                log.warning("stream store: writing %d states failed (%s); retrying", len(batch), self.error)
                raise
            finally:
                self._writing = set()
            self.failures, self.error, self.error_at = 0, None, None
            self.written += len(batch)
            return len(batch)

    async def close(self, timeout_s: float = 10.0) -> int:
        """Stop the flusher and write what is left (``eyenet down`` calls it before stopping Ray)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        written = await asyncio.wait_for(self.flush(), timeout=timeout_s)
        self.streams.snapshots.close()  # a later write (the actor lives on) connects again
        return written

    async def get(self, key: str) -> tuple[int, Any]:
        self._start()
        return self.streams.get(key)

    async def commit(self, key: str, version: int, state: Any) -> tuple[bool, int, Any]:
        self._start()
        return self.streams.commit(key, version, state)

    async def heartbeat(self, owner: str, lease_s: float) -> None:
        """Replica ``owner`` is alive for ``lease_s`` more seconds (sent from its own thread, so a
        replica whose event loop is busy keeps its series; see :class:`eyenet.serving.leases.OwnedStates`)."""
        self._start()
        self.streams.renew(owner, lease_s)

    def heartbeat_blocking(self, owner: str, lease_s: float, timeout_s: float) -> None:
        """:meth:`heartbeat` for an in-process store, from any thread (a Serve replica calls the actor's)."""
        self.streams.renew(owner, lease_s)

    async def claim(self, owner: str, keys: list[str], lease_s: float, wait_s: float) -> list[tuple[int, Any]]:
        """Give ``keys`` to replica ``owner`` (renewing its lease): per key ``(version, state)`` (a state
        as stored: bytes or a :class:`StreamState`; None for a new series) or ``(-1, Refusal)``. A key
        another live replica holds is asked of it (:meth:`wanted`) and waited for, at most ``wait_s``
        (then a 503 :class:`Refusal`); a holder whose lease lapses meanwhile loses it."""
        self._start()
        s = self.streams
        s.renew(owner, lease_s)
        deadline = time.monotonic() + wait_s
        out: dict[str, tuple[int, Any]] = {}
        todo = list(dict.fromkeys(keys))
        while todo:
            blocked: dict[str, str] = {}
            for key in todo:
                other = s.holder(key)
                if other is None or other == owner:
                    out[key] = s.claim(key, owner)
                else:
                    blocked[key] = other
            todo = list(blocked)
            if not todo:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                m.ERRORS.labels("handoff").inc()
                for key, other in blocked.items():
                    out[key] = (-1, Refusal(f"series {key.split('/', 2)[-1]!r} is held by another router replica "
                                            f"that did not hand it over within {wait_s:g} s; retry shortly",
                                            1.0, status=503))
                break
            for key, other in blocked.items():
                self._want(other, key)
            lapse = min(s.alive.get(o, 0.0) for o in blocked.values()) - s.clock()
            # until a holder syncs or releases, or the first of their leases lapses
            await self._until(self._waiting, max(0.001, min(left, lapse + 0.001)))
        return [out[k] for k in keys]

    async def sync(self, owner: str, items: list[tuple[str, int, Any]], released: list[str],
                   lease_s: float) -> list[tuple[bool, int, Any]]:
        """:meth:`Streams.sync` (states as :meth:`StreamState.to_bytes`, kept as they come), renewing
        ``owner``'s lease; wakes the claims waiting for a key it synced or released."""
        self._start()
        self.streams.renew(owner, lease_s)
        answers = self.streams.sync(owner, items, released)
        if released or items:
            self._notify()
        return answers

    async def wanted(self, owner: str, timeout_s: float) -> list[str]:
        """The keys other replicas wait for from ``owner`` (a long poll: answers at once when there are
        some, else when one is asked for or after ``timeout_s`` with none)."""
        if not self._wants.get(owner):
            await self._until(self._asked.setdefault(owner, []), timeout_s)
        return sorted(self._wants.pop(owner, ()))

    def _want(self, owner: str, key: str) -> None:
        self._wants.setdefault(owner, set()).add(key)
        self._wake(self._asked.get(owner, []))
        if len(self._wants) > 64:  # asks of replicas whose leases lapsed long ago
            self._wants = {o: k for o, k in self._wants.items() if o in self.streams.alive}
            self._asked = {o: w for o, w in self._asked.items() if o in self.streams.alive}

    def _notify(self) -> None:
        self._wake(self._waiting)

    @staticmethod
    async def _until(waiters: list[asyncio.Future], timeout_s: float) -> None:
        """Wait for :meth:`_wake` of ``waiters`` or ``timeout_s``, whichever comes first."""
        fut = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout=timeout_s)
        except asyncio.TimeoutError:
            pass
        finally:
            if fut in waiters:
                waiters.remove(fut)

    @staticmethod
    def _wake(waiters: list[asyncio.Future]) -> None:
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        waiters.clear()

    async def delete(self, key: str, owner: str | None = None, lease_s: float | None = None) -> int:
        """Reset a series (:meth:`Streams.delete`); with ``owner``, that replica holds it now (its lease
        renewed for ``lease_s``)."""
        self._start()
        if owner is not None and lease_s is not None:
            self.streams.renew(owner, lease_s)
        version = self.streams.delete(key, owner)
        self._notify()
        return version

    async def count(self) -> int:
        return self.streams.count()

    async def health(self) -> dict[str, Any]:
        """``ok`` False with ``error`` while snapshots fail; the bounded structures' sizes and counters."""
        return {"ok": self.error is None, "error": self.error, "error_at": self.error_at,
                "failures": self.failures, "dirty": len(self.streams.dirty | self._writing), "written": self.written,
                **self.streams.stats()}

    async def ping(self) -> float:
        return time.time()
