"""Per-series stream states with optimistic versions, written through to SQLite.

Versions make concurrent writers safe without locks: a writer ``commit``\\ s the
state it computed from version ``v``. The store accepts it when its own version
is still ``v`` and answers with its newer state otherwise, so the writer can
score again from that. A commit from a version *ahead* of the store's is
accepted too: the store lost updates (it restarted from a snapshot a moment
old) and the writer's copy descends from a newer state than anything it has.
Deleting leaves a tombstone with a higher version, so a writer's stale copy
cannot bring a reset stream back.

The store keeps every state in memory and writes only the ones that changed,
as compact binary rows (:meth:`eyenet.core.model.StreamState.to_bytes`), so a
snapshot costs in proportion to the traffic since the last one, not to the
number of series. States idle longer than ``ttl_s`` are forgotten.
"""
from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from eyenet.core.model import StreamState

_SCHEMA = "CREATE TABLE IF NOT EXISTS streams (key TEXT PRIMARY KEY, version INTEGER NOT NULL, " \
          "touched REAL NOT NULL, state BLOB)"


class Streams:
    """In-memory states keyed by ``tenant/group/series``, persisted incrementally to ``state_dir/streams.db``."""

    def __init__(self, state_dir: str | Path, *, ttl_s: float = 7 * 86400) -> None:
        self.path = Path(state_dir) / "streams.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        self.states: dict[str, tuple[int, StreamState | None, float]] = {}
        self.dirty: set[str] = set()
        self.unreadable = 0  # rows skipped at load (a corrupt row restarts that stream; the others load)
        self._load()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(_SCHEMA)
        return db

    def _load(self) -> None:
        try:
            db = self._connect()
            rows = db.execute("SELECT key, version, touched, state FROM streams").fetchall()
            db.close()
        except sqlite3.DatabaseError:
            # not a database (a damaged file): keep it aside for inspection and start afresh
            self.path.replace(self.path.with_name(f"streams.db.unreadable-{int(time.time())}"))
            return
        for key, version, touched, blob in rows:
            try:
                self.states[key] = (int(version), None if blob is None else StreamState.from_bytes(blob), float(touched))
            except (ValueError, KeyError, TypeError):
                self.unreadable += 1

    # -- the API the store actor exposes ------------------------------------------------------
    def get(self, key: str) -> tuple[int, StreamState | None]:
        version, state, _ = self.states.get(key, (0, None, 0.0))
        return version, state

    def commit(self, key: str, version: int, state: StreamState) -> tuple[bool, int, StreamState | None]:
        """Store ``state`` (computed from ``version``) as ``version + 1``; ``(accepted, version now,
        the store's newer state when refused)``."""
        current, stored, _ = self.states.get(key, (0, None, 0.0))
        if version < current:
            return False, current, stored
        self.states[key] = (version + 1, state, time.time())
        self.dirty.add(key)
        return True, version + 1, None

    def delete(self, key: str) -> int:
        """Forget a stream's state; returns the tombstone's version (the next commit's base)."""
        current = self.states.get(key, (0, None, 0.0))[0]
        self.states[key] = (current + 1, None, time.time())
        self.dirty.add(key)
        return current + 1

    def count(self) -> int:
        return sum(1 for _, s, _ in self.states.values() if s is not None)

    # -- persistence ------------------------------------------------------------------------------
    def take_dirty(self) -> list[tuple[str, int, float, StreamState | None]]:
        """The changed states since the last call (states are never mutated, only replaced, so the
        batch can be written from another thread), and the expired ones as deletions (version -1)."""
        now = time.time()
        for key in [k for k, (_, _, t) in self.states.items() if now - t > self.ttl_s]:
            del self.states[key]
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

    def write(self, batch: list[tuple[str, int, float, StreamState | None]]) -> None:
        rows = [(k, v, t, None if s is None else s.to_bytes()) for k, v, t, s in batch if v >= 0]
        gone = [(k,) for k, v, _, _ in batch if v < 0]
        db = self._connect()
        try:
            with db:
                db.executemany("INSERT INTO streams (key, version, touched, state) VALUES (?, ?, ?, ?) "
                               "ON CONFLICT(key) DO UPDATE SET version=excluded.version, "
                               "touched=excluded.touched, state=excluded.state", rows)
                db.executemany("DELETE FROM streams WHERE key = ?", gone)
        finally:
            db.close()

    def flush(self) -> int:
        batch = self.take_dirty()
        if batch:
            self.write(batch)
        return len(batch)


class StreamStore:
    """The actor around :class:`~eyenet.serving.streams.Streams`: snapshots in a thread, off the event loop."""

    def __init__(self, state_dir: str, interval_s: float = 1.0, ttl_s: float = 7 * 86400) -> None:
        self.streams = Streams(state_dir, ttl_s=ttl_s)
        self.interval_s = interval_s
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flusher())

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()

    async def flush(self) -> int:
        """Write the changed states now; returns how many."""
        async with self._lock:
            batch = self.streams.take_dirty()
            if batch:
                await asyncio.to_thread(self.streams.write, batch)
            return len(batch)

    async def get(self, key: str) -> tuple[int, Any]:
        self._start()
        return self.streams.get(key)

    async def commit(self, key: str, version: int, state: Any) -> tuple[bool, int, Any]:
        self._start()
        return self.streams.commit(key, version, state)

    async def delete(self, key: str) -> int:
        self._start()
        return self.streams.delete(key)

    async def count(self) -> int:
        return self.streams.count()

    async def ping(self) -> float:
        return time.time()
