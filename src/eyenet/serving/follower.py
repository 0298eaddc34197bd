"""A router replica's side of the model controller (:mod:`eyenet.serving.controller`).

The :class:`Follower` long-polls the controller for the serving table, loads
announced versions before they serve (``prepare``) and reports them ready, and
answers "which version serves ``name`` now?" from memory, so resolving a model
costs a request nothing. When the controller is away (restarting, killed) the
table it last sent stays in force: serving goes on with the versions it named.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from eyenet.core.redact import redact
from eyenet.serving.controller import Entry

log = logging.getLogger(__name__)


def unwrap(exc: BaseException) -> BaseException:
    """The exception an actor method raised, without Ray's wrapper (whose text carries a traceback)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class Follower:
    def __init__(self, controller: Callable[[], Any], replica: str,
                 prepare: Callable[[str, int], Awaitable[Any]], *, hold_s: float = 2.0) -> None:
        self._controller = controller  # returns the actor handle (looked up again after errors)
        self.replica = replica
        self._prepare_fn = prepare
        self.hold_s = hold_s
        self.table: dict[str, Entry] = {}
        self.epoch: list[Any] | None = None
        self.health: dict[str, Any] = {}
        self.connected = False
        self.error: str | None = None
        self.last_contact: float | None = None
        self._task: asyncio.Task | None = None
        self._preparing: dict[tuple[str, int], asyncio.Task] = {}
        self._reported: set[tuple[str, int]] = set()  # ready reports this controller incarnation has
        self._armed: set[tuple[str, int, float]] = set()  # switch instants acknowledged
        self._telling: set[asyncio.Future] = set()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def version(self, name: str) -> int | None:
        e = self.table.get(name)
        return e.serving(time.time()) if e is not None else None

    def merge(self, name: str, entry: list[Any]) -> None:
        self.table[name] = Entry.from_list(entry)

    def serving(self) -> dict[str, int]:
        now = time.time()
        return {n: e.serving(now) for n, e in self.table.items()}

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "error": self.error,
                "last_contact_s_ago": None if self.last_contact is None else round(time.time() - self.last_contact, 2),
                "registry": self.health}

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                msg = await asyncio.wait_for(
                    self._controller().follow.remote(self.replica, self.epoch, self.serving()),
                    timeout=self.hold_s + 10.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - controller away: keep the table, retry
                self.connected = False
                self.error = redact(f"{type(unwrap(exc)).__name__}: "
                                    f"{str(unwrap(exc)).splitlines()[0][:200] if str(unwrap(exc)) else ''}")
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
                continue
            backoff = 0.2
            if self.epoch is None or msg["epoch"][0] != self.epoch[0]:
                self._reported.clear()  # a new controller: it has none of our ready reports
            self.epoch, self.health = msg["epoch"], msg["health"]
            self.connected, self.error, self.last_contact = True, None, time.time()
            for name, raw in msg["table"].items():
                entry = Entry.from_list(raw)
                self.table[name] = entry
                if entry.next is not None:
                    self._prepare(name, entry.next)
                    if entry.at is not None and (name, entry.next, entry.at) not in self._armed:
                        self._armed.add((name, entry.next, entry.at))
                        self._tell(self._controller().armed.remote(self.replica, name, entry.next, entry.at))

    def _tell(self, ref: Any) -> None:
        """Send a report without waiting for it (its failure only costs the controller a late notice)."""
        fut = asyncio.ensure_future(ref)
        self._telling.add(fut)

        def done(f: asyncio.Future) -> None:
            self._telling.discard(f)
            if not f.cancelled() and f.exception() is not None:
                log.debug("report to the controller failed: %s", f.exception())

        fut.add_done_callback(done)
        if len(self._armed) > 1024:
            self._armed.clear()

    def _prepare(self, name: str, version: int) -> None:
        key = (name, version)
        if key in self._reported or key in self._preparing:
            return
        self._preparing[key] = asyncio.get_running_loop().create_task(self._do_prepare(name, version))

    async def _do_prepare(self, name: str, version: int) -> None:
        try:
            await self._prepare_fn(name, version)
            await self._controller().ready.remote(self.replica, name, version)
            self._reported.add((name, version))
        except Exception as exc:  # noqa: BLE001 - not ready: the controller switches after its timeout anyway
            log.warning("could not prepare %s version %s: %s", name, version, unwrap(exc))
        finally:
            self._preparing.pop((name, version), None)
