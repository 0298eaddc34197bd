"""The model controller: which version of each model serves, and the live switch from one version to the next.

One controller per Serve application runs as a detached, named Ray actor
(:func:`eyenet.serve.actors.get_controller`; Ray restarts it when it dies).
It watches the registry's aliases (every ``poll_s``, or at once on
:meth:`Controller.sync`) and publishes a *serving table*, ``{model: Entry}``,
that every router replica follows by long-polling :meth:`Controller.follow`.

:class:`Controller` composes four parts, none of which needs Ray:

- :mod:`eyenet.serving.switching`: the serving table, the replicas, and the
  prepare-switch-settle steps of a switch;
- :mod:`eyenet.serving.admission`: the serving check a version passes before
  it serves, and refusing one that fails (REJECT, alias moved back);
- :mod:`eyenet.serving.reviews` and :mod:`eyenet.serving.retraining`: the gate
  review of each new challenger (with ``review_challengers``), and retraining
  on drift, poor precision or a schedule;
- :mod:`eyenet.serving.operations`: promote, review, rollback, history.

The controller keeps nothing that cannot be rebuilt: after a restart it reads
the aliases from MLflow, the versions the replicas serve from their first
:meth:`follow` calls (they keep serving meanwhile), and whether a version
passed the serving check from its ``eyenet.serving_check`` tag. While MLflow
is unreachable nothing changes: replicas serve what they serve, and the
controller retries with exponential backoff, reporting the error in
:meth:`status` (``/healthz``, ``eyenet status``).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from eyenet.core.errors import NotServableError
from eyenet.core.redact import redact_all
from eyenet.lifecycle import audit, gate
from eyenet.lifecycle.audit import AuditLog
from eyenet.lifecycle.registry import Registry
from eyenet.serving.admission import ACTOR, CHECK_TAG, PASSED, Admission, probe_series, serving_problems
from eyenet.serving.operations import Operations
from eyenet.serving.retraining import Launch, RetrainScheduler
from eyenet.serving.reviews import Reviews
from eyenet.serving.settings import ControllerActorSettings
from eyenet.serving.switching import Entry, Replica, Switchboard, short

__all__ = ["ACTOR", "CHECK_TAG", "PASSED", "Controller", "Entry", "Health", "Replica", "probe_series",
           "serving_problems", "settings_from"]

log = logging.getLogger(__name__)


class Health:
    """Whether the registry answered the last sync, and how the retries go while it does not."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {"registry_ok": None, "last_sync": None, "error": None, "failures": 0,
                                      "retry_in_s": None}

    def synced(self) -> None:
        self.state.update(registry_ok=True, last_sync=time.time(), error=None, failures=0, retry_in_s=None)

    def failed(self, exc: BaseException, failures: int, retry_in_s: float) -> None:
        self.state.update(registry_ok=False, error=short(exc), failures=failures, retry_in_s=retry_in_s)

    def to_dict(self) -> dict[str, Any]:
        return {**self.state, "ok": self.state["registry_ok"] is not False}


class Controller:
    """The actor's logic (see the module docstring). Every public method is a coroutine: Ray runs
    it on the actor's event loop; registry calls go to threads so the loop keeps answering.

    ``settings``: :class:`~eyenet.serving.settings.ControllerActorSettings` or its ``model_dump()``
    (:func:`settings_from`). ``monitor()`` returns the app's monitor (coroutines ``drifted``,
    ``report``, ``recent_values``) or None; ``launch_retrain`` runs a retraining (see
    :mod:`eyenet.serving.retraining`; default: in a thread)."""

    def __init__(self, mlflow_uri: str | None, settings: ControllerActorSettings | dict[str, Any] | None = None,
                 monitor: Callable[[], Any | None] | None = None, launch_retrain: Launch | None = None) -> None:
        s = settings if isinstance(settings, ControllerActorSettings) else \
            ControllerActorSettings.model_validate(settings or {})
        self.settings = s
        self.policy = gate.GatePolicy.from_dict(s.gate)
        self.registry = Registry(mlflow_uri, audit_log=AuditLog(s.audit_uri) if s.audit_uri else None)
        self.started = time.time()
        self.health = Health()
        self.admission = Admission(self.registry, self.policy, rows=s.check_rows, alias=s.alias)
        self.board = Switchboard(s, self.registry, self.admission)
        self.reviews = Reviews(self.registry, self.policy, enabled=s.review_challengers, promoted=self._poke)
        self.retraining = RetrainScheduler(s.retrain, self.registry, self.reviews, served=self.board.served,
                                           monitor=monitor, launch=launch_retrain, audit_uri=s.audit_uri)
        self.operations = Operations(self.registry, self.policy, self.admission, self.sync)
        self._wake: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task] = []

    # -- life --------------------------------------------------------------------------------
    def _start(self) -> None:
        """Start the watch loops (lazily: an actor's constructor has no running event loop)."""
        if self._lock is None:
            self.board.start()
            self._wake, self._lock = asyncio.Event(), asyncio.Lock()
            loop = asyncio.get_running_loop()
            self._tasks.append(loop.create_task(self._watch_loop()))
            if self.settings.retrain.enabled:
                self._tasks.append(loop.create_task(self.retraining.loop()))

    def _poke(self) -> None:
        """Read the aliases now (a review moved the champion)."""
        if self._wake is not None:
            self._wake.set()

    async def _watch_loop(self) -> None:
        # replicas that served under the previous incarnation report what they serve first
        await asyncio.sleep(min(1.5, self.settings.hold_s))
        failures = 0
        while True:
            try:
                async with self._lock:
                    await self._sync()
                failures = 0
                delay = self.settings.poll_s
            except Exception as exc:  # noqa: BLE001 - MLflow down or broken: keep serving, retry
                failures += 1
                delay = min(self.settings.max_backoff_s, self.settings.poll_s * 2 ** failures)
                self.health.failed(exc, failures, delay)
                log.warning("controller: registry sync failed (%d in a row), retrying in %.1fs: %s",
                            failures, delay, short(exc))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def _sync(self) -> None:
        """Read the aliases; for each model, start the review and the switch they call for."""
        aliases = await asyncio.to_thread(self.registry.aliases)
        self.health.synced()
        for name, al in aliases.items():
            self._review_if_due(name, al)
            champ = al.get(self.settings.alias)
            if champ is not None:
                await self.board.follow_alias(name, champ)

    def _review_if_due(self, name: str, aliases: dict[str, int]) -> None:
        version = self.reviews.due(name, aliases, time.time(), busy=self.retraining.busy(name))
        if version is not None:
            self.reviews.start(name, version)

    # -- what replicas call ------------------------------------------------------------------
    def _message(self) -> dict[str, Any]:
        return {"epoch": self.board.epoch_id(), "table": self.board.lists(), "health": self.health.to_dict()}

    async def follow(self, replica: str, epoch: list[Any] | None, serving: dict[str, int]) -> dict[str, Any]:
        """Long poll: the serving table once it differs from ``epoch`` (or after ``hold_s``).
        ``serving`` is what the replica serves now: the controller's view of Serve."""
        self._start()
        await self.board.follow(replica, epoch, serving)
        return self._message()

    def lead_s(self) -> float:
        """Lead time between announcing a switch instant and the instant (see :meth:`Switchboard.lead_s`)."""
        return self.board.lead_s()

    async def armed(self, replica: str, name: str, version: int, at: float) -> None:
        """A replica knows that ``version`` of ``name`` serves from ``at`` (sent when it hears of it)."""
        self._start()
        self.board.armed(replica, name, version)

    async def snapshot(self) -> dict[str, list[Any]]:
        """The serving table as it stands (what a starting replica loads before it takes traffic)."""
        self._start()
        return self.board.lists()

    async def ready(self, replica: str, name: str, version: int) -> None:
        """A replica has ``version`` of ``name`` loaded and warm."""
        self._start()
        self.board.ready(replica, name, version)

    async def resolve(self, name: str) -> list[Any]:
        """The entry of a model the table does not hold yet (a replica's first request for it)."""
        self._start()
        table = self.board.table
        if name not in table:
            async with self._lock:
                await self._sync()
            await self.board.wait(name, self.settings.ready_timeout_s)
        if name not in table:
            if name in self.admission.refused:
                raise NotServableError(f"{name}: {self.admission.refused[name]['reason']}")
            await asyncio.to_thread(self.registry.version, name, alias=self.settings.alias)  # raises UnknownNameError
            raise NotServableError(f"{name}: its {self.settings.alias} is not served yet")
        return table[name].to_list()

    # -- what operators call -----------------------------------------------------------------
    async def sync(self, wait: bool = True, timeout: float = 60.0) -> dict[str, Any]:
        """Read the aliases now (instead of at the next poll); with ``wait``, until the switches and
        reviews this starts are done."""
        self._start()
        async with self._lock:
            await self._sync()
        if wait:
            deadline = time.time() + timeout
            while self._pending() and time.time() < deadline:
                await asyncio.wait(self._pending(), timeout=max(0.0, deadline - time.time()))
                if not self._pending():
                    async with self._lock:  # a review may have moved the champion
                        await self._sync()
        return await self.status()

    def _pending(self) -> list[asyncio.Task]:
        return [*self.board.switching.values(), *self.reviews.reviewing.values()]

    async def promote(self, name: str, version: int | None = None, *, force: bool = False, reason: str = "",
                      actor: str | None = None) -> dict[str, Any]:
        self._start()
        return await self.operations.promote(name, version, force=force, reason=reason, actor=actor)

    async def review(self, name: str, actor: str | None = None) -> dict[str, Any]:
        self._start()
        return await self.operations.review(name, actor=actor)

    async def rollback(self, name: str, *, to_version: int | None = None, reason: str = "",
                       actor: str | None = None) -> dict[str, Any]:
        self._start()
        return await self.operations.rollback(name, to_version=to_version, reason=reason, actor=actor)

    async def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        return await self.operations.history(name, limit)

    async def status(self) -> dict[str, Any]:
        self._start()
        now = time.time()
        live = self.board.live()
        return redact_all({  # errors in it may quote a store's URI
            "incarnation": self.board.incarnation,
            "started": self.started,
            "health": self.health.to_dict(),
            "table": self.board.view(now),
            "replicas": {r: {"serving": rep.serving, "seen_s_ago": round(now - rep.seen, 2)}
                         for r, rep in sorted(live.items())},
            "switching": sorted(self.board.switching),
            "reviewing": sorted(self.reviews.reviewing),
            "refused": self.admission.refused,
            "swaps": list(self.board.swaps)[-20:],
            "reviews": list(self.reviews.done)[-20:],
            "retraining": sorted(self.retraining.retraining),
            "retrains": list(self.retraining.retrains)[-20:],
        })

    async def record(self, event: str, name: str, version: int | None, *, reason: str, actor: str,
                     metrics: dict[str, Any] | None = None) -> None:
        """Append an event the API saw (e.g. FEEDBACK) to the controller's audit log."""
        await asyncio.to_thread(audit.record, self.registry, event, name, version, reason=reason, actor=actor,
                                metrics=metrics, mirror=False)

    async def ping(self) -> str:
        self._start()
        return self.board.incarnation


def settings_from(config: Any) -> dict[str, Any]:
    """Controller settings from an :class:`eyenet.serving.settings.AppConfig`: its ``controller``
    section with the app's name and alias (a :class:`ControllerActorSettings` as a dict, for Ray)."""
    return ControllerActorSettings(**config.controller.model_dump(), alias=config.alias,
                                   app=config.name).model_dump()
