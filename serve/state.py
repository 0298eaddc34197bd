"""Where per-series stream state lives: a detached actor, snapshotted to disk.

Router replicas are stateless, so a replica restart or scale-in loses
nothing; the store survives them. The store itself writes a snapshot every
``interval_s`` seconds (and on shutdown) and reloads it when restarted, so a
crash of the store loses at most that many seconds of updates.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

STORE_NAME = "eyenet-stream-state"
NAMESPACE = "eyenet"


class StreamStore:
    """``get`` / ``put`` of stream states keyed by ``tenant/group/series``, with optimistic versions."""

    def __init__(self, state_dir: str, interval_s: float = 1.0) -> None:
        self.path = Path(state_dir) / "streams.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.interval_s = interval_s
        self.states: dict[str, tuple[int, Any]] = {}
        self.dirty = False
        if self.path.exists():
            from eyenet.model import StreamState

            try:
                saved = json.loads(self.path.read_text())
                self.states = {k: (int(v), StreamState.from_dict(d)) for k, (v, d) in saved.items()}
            except (OSError, ValueError, KeyError, TypeError):
                self.states = {}  # an unreadable snapshot: streams start afresh (and say so by `seen` = 0)
        self._task: asyncio.Task | None = None

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if self.dirty:
                self.snapshot()

    def snapshot(self) -> int:
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({k: [v, st.to_dict()] for k, (v, st) in self.states.items()}))
        tmp.replace(self.path)
        self.dirty = False
        return len(self.states)

    async def get(self, key: str) -> tuple[int, Any]:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._snapshots())
        return self.states.get(key, (0, None))

    async def put(self, key: str, version: int, state: Any) -> bool:
        """Store ``state`` as version ``version + 1`` if the stored version is still ``version``."""
        current = self.states.get(key, (0, None))[0]
        if current != version:
            return False
        self.states[key] = (version + 1, state)
        self.dirty = True
        return True

    async def delete(self, key: str) -> None:
        self.states.pop(key, None)
        self.dirty = True

    async def count(self) -> int:
        return len(self.states)

    async def ping(self) -> float:
        return time.time()


def get_store(state_dir: str) -> Any:
    """The store actor (created on first use; detached, restarted by Ray if it dies)."""
    import ray

    return ray.remote(StreamStore).options(
        name=STORE_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, max_restarts=-1,
        max_task_retries=-1, num_cpus=0,
    ).remote(state_dir)
