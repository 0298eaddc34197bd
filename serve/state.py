"""Where per-series stream state lives: a detached actor, written through to SQLite.

Router replicas keep a cache of the states they last wrote, so the usual
``/v1/stream`` call costs one call to this store (``commit``). The store is the
authority: a replica restart or scale-in loses nothing, and the store writes
the states that changed to ``state_dir/streams.db`` every ``interval_s``
seconds (and on shutdown) and reloads them when Ray restarts it. See
:class:`eyenet.streams.Streams` for the version rules.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from eyenet.streams import Streams

STORE_NAME = "eyenet-stream-state"
NAMESPACE = "eyenet"


class StreamStore:
    """The actor around :class:`~eyenet.streams.Streams`: snapshots in a thread, off the event loop."""

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


def get_store(state_dir: str) -> Any:
    """The store actor (created on first use; detached, restarted by Ray if it dies)."""
    import ray

    return ray.remote(StreamStore).options(
        name=STORE_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, max_restarts=-1,
        max_task_retries=-1, num_cpus=0,
    ).remote(state_dir)
