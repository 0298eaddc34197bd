"""The model controller: which version of each model serves, and the live switch from one version to the next.

One controller per Serve application runs as a detached, named Ray actor
(:func:`eyenet.serve.actors.get_controller`; Ray restarts it when it dies).
It watches the registry's aliases (every ``poll_s``, or at once on
:meth:`Controller.sync`) and publishes a *serving table*, ``{model: Entry}``,
that every router replica follows by long-polling :meth:`Controller.follow`.

A switch (the ``champion`` alias moved, by a review, a promotion, a rollback or
a person) goes in three steps, none of which pauses a request:

1. *prepare*: the table announces the new version as ``next``; each router
   replica loads it (and warms the family deployments with it) beside the
   version it serves, and reports ready. Meanwhile the controller loads the
   version itself and checks it on held-out data: it must load, give finite
   scores within [0, 1] and meet the latency budget (:mod:`eyenet.gate`). A
   version that fails is never served: the controller withdraws it, records a
   REJECT with the reason and moves the alias back to the serving version
   (ROLLBACK).
2. *switch*: once every live replica is ready, the table names an instant
   ``at`` (``switch_delay_s`` ahead); every replica resolves requests that start
   at or after it to the new version, and earlier ones to the old. So the
   versions a client sees go from old to new and never back, and no request
   waits for a load.
3. *settle*: the entry becomes the new version alone; when every replica
   reports serving it, the switch is recorded (SERVE event) with its timings.

The controller keeps nothing that cannot be rebuilt: after a restart it reads
the aliases from MLflow, the versions the replicas serve from their first
:meth:`follow` calls (they keep serving meanwhile), and whether a version
passed the serving check from its ``eyenet.serving_check`` tag. While MLflow
is unreachable nothing changes: replicas serve what they serve, and the
controller retries with exponential backoff, reporting the error in
:meth:`status` (``/healthz``, ``eyenet status``).

With ``review_challengers`` it also puts each new ``challenger`` through the
gate (:func:`eyenet.lifecycle.promotion.review`), so registering a model is all it takes
to have it promoted or archived.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from eyenet.lifecycle import audit, gate, holdout, promotion
from eyenet.core import synthetic
from eyenet.core.errors import EyenetError, GateRejectedError, LifecycleError, NotServableError, UnknownNameError
from eyenet.lifecycle.registry import CHALLENGER, CHAMPION, Registry
from eyenet.core.evaluation import ValidationSeries

log = logging.getLogger(__name__)

ACTOR = "controller"
#: version tag: "passed" once the controller checked the version can serve, else why it cannot
CHECK_TAG = audit.TAG + "serving_check"
PASSED = "passed"


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


@dataclass
class Settings:
    poll_s: float = 0.5
    max_backoff_s: float = 10.0
    review_challengers: bool = True
    ready_timeout_s: float = 60.0
    switch_delay_s: float = 0.25
    max_switch_delay_s: float = 2.0
    replica_ttl_s: float = 5.0
    check_rows: int = 2000
    gate: dict[str, Any] = field(default_factory=dict)
    audit_path: str | None = None
    retrain: dict[str, Any] = field(default_factory=dict)  # eyenet.serving.settings.RetrainSettings fields
    app: str = "eyenet"  # the Serve app (its monitor is found by this name)
    alias: str = CHAMPION
    hold_s: float = 2.0  # longest a follow call waits for a change


@dataclass
class _RetrainSettings:
    """The controller's copy of :class:`eyenet.serving.settings.RetrainSettings` (it gets them as a dict)."""

    enabled: bool = True
    features: list[str] = field(default_factory=lambda: ["value"])
    drift_for_s: float = 300.0
    precision_below: float | None = 0.5
    every_s: float | None = None
    cooldown_s: float = 3600.0
    rows: int = 1000
    check_s: float = 5.0
    num_cpus: float = 1.0
    root: str | None = None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def probe_series(registry: Registry, name: str, version: int, rows: int) -> list[ValidationSeries]:
    """What a version is checked on before it serves: its held-out data (cut to ``rows``), or, when it
    does not record its training data, a synthetic series."""
    try:
        series = holdout.validation_for(registry, name, version)
    except LifecycleError:
        t, v, windows = synthetic.series("cpu_pct", n=rows, seed=7)
        series = [ValidationSeries("synthetic-probe", np.asarray(v, dtype=float), list(windows), 0)]
    out = []
    for s in series:
        n = min(len(s.values), max(rows, s.train_rows + 200))
        out.append(ValidationSeries(s.name, s.values[:n], [(a, min(b, n - 1)) for a, b in s.windows if a < n],
                                    min(s.train_rows, n)))
    return out


def serving_problems(registry: Registry, name: str, version: int, policy: gate.GatePolicy, rows: int) -> list[str]:
    """Why ``version`` must not serve (empty: it may): it fails to load or crashes, gives NaN/inf or
    scores outside [0, 1], or is slower than the latency budget. Quality is the gate's business
    (:func:`eyenet.lifecycle.promotion.review`); this check also covers versions forced past the gate."""
    series = probe_series(registry, name, version, rows)
    report = gate.evaluate_version(registry, name, version, series, policy)
    if report.error:
        return [report.error]
    found = gate.problems(report, policy)
    keep = ("non-finite", "latency budget", "outside [0, 1]")
    return [p for p in found if any(k in p for k in keep)]


class Controller:
    """The actor's logic (see the module docstring). Every public method is a coroutine: Ray runs
    it on the actor's event loop; registry calls go to threads so the loop keeps answering."""

    def __init__(self, mlflow_uri: str | None, settings: dict[str, Any] | None = None) -> None:
        self.settings = Settings(**(settings or {}))
        if self.settings.audit_path:  # this process's audit log (eyenet.lifecycle.audit reads the variable)
            os.environ[audit.ENV_PATH] = self.settings.audit_path
        self.policy = gate.GatePolicy.from_dict(self.settings.gate)
        self.registry = Registry(mlflow_uri)
        self.incarnation = uuid.uuid4().hex[:12]
        self.started = time.time()
        self.epoch = 0
        self.table: dict[str, Entry] = {}
        self.replicas: dict[str, Replica] = {}
        self.swaps: deque[dict[str, Any]] = deque(maxlen=100)
        self.arm_lags: deque[float] = deque(maxlen=5)  # how long replicas took to learn a switch instant
        self.refused: dict[str, dict[str, Any]] = {}
        self.reviews: deque[dict[str, Any]] = deque(maxlen=100)
        self.health: dict[str, Any] = {"registry_ok": None, "last_sync": None, "error": None, "failures": 0,
                                       "retry_in_s": None}
        self._changed: asyncio.Event | None = None
        self._replica_news: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._switching: dict[str, asyncio.Task] = {}
        self._switch_recs: dict[str, dict[str, Any]] = {}
        self._review_after: dict[tuple[str, int], float] = {}  # (model, challenger) -> earliest next review
        self._reviewing: dict[str, asyncio.Task] = {}
        self._watch: asyncio.Task | None = None
        self._retrain_watch: asyncio.Task | None = None
        self.retrain = _RetrainSettings(**self.settings.retrain)
        self._retraining: dict[str, asyncio.Task] = {}
        self._last_retrain: dict[str, float] = {}
        self._drift_since: dict[str, float] = {}
        self.retrains: deque[dict[str, Any]] = deque(maxlen=50)
        self._first_sync: asyncio.Future | None = None

    # -- life --------------------------------------------------------------------------------
    def _start(self) -> None:
        """Start the watch loop (lazily: an actor's constructor has no running event loop)."""
        if self._watch is None:
            self._changed, self._replica_news, self._wake = asyncio.Event(), asyncio.Event(), asyncio.Event()
            self._lock = asyncio.Lock()
            self._first_sync = asyncio.get_running_loop().create_future()
            self._watch = asyncio.get_running_loop().create_task(self._watch_loop())
            if self.retrain.enabled:
                self._retrain_watch = asyncio.get_running_loop().create_task(self._retrain_loop())

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
                self.health.update(registry_ok=False, error=_short(exc), failures=failures, retry_in_s=delay)
                log.warning("controller: registry sync failed (%d in a row), retrying in %.1fs: %s",
                            failures, delay, _short(exc))
            if not self._first_sync.done():
                self._first_sync.set_result(True)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass

    def _publish(self) -> None:
        self.epoch += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def _live(self) -> dict[str, Replica]:
        now = time.time()
        for rid in [r for r, rep in self.replicas.items() if now - rep.seen > self.settings.replica_ttl_s * 4]:
            del self.replicas[rid]  # long gone
        return {r: rep for r, rep in self.replicas.items() if now - rep.seen <= self.settings.replica_ttl_s}

    def _reported(self, name: str) -> int | None:
        """The version most live replicas say they serve (how a restarted controller learns it)."""
        counts = Counter(rep.serving[name] for rep in self._live().values() if name in rep.serving)
        return counts.most_common(1)[0][0] if counts else None

    # -- watching ----------------------------------------------------------------------------
    async def _sync(self) -> None:
        aliases = await asyncio.to_thread(self.registry.aliases)
        self.health.update(registry_ok=True, last_sync=time.time(), error=None, failures=0, retry_in_s=None)
        for name, al in aliases.items():
            # the app serves ensembles; a retraining reviews its own result; a challenger version the
            # gate could not judge is not tried again (a failure is retried after a minute)
            if (self.settings.review_challengers and CHALLENGER in al and name.endswith(".ensemble")
                    and name not in self._reviewing and name not in self._retraining
                    and al.get(CHAMPION) != al[CHALLENGER]
                    and time.time() >= self._review_after.get((name, al[CHALLENGER]), 0.0)):
                self._reviewing[name] = asyncio.get_running_loop().create_task(self._review(name, al[CHALLENGER]))
            champ = al.get(self.settings.alias)
            if champ is None:
                continue
            if name in self._switching:
                rec = self._switch_recs.get(name, {})
                if rec.get("to") == champ or "switched" in rec or "refused" in rec:
                    continue  # under way, or past the point where it can be withdrawn: next poll
                # the alias moved again before the switch was made: withdraw it, switch to the latest
                task = self._switching[name]
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                if self._switching.get(name) is task:  # cancelled before it ran
                    del self._switching[name]
                    self._switch_recs.pop(name, None)
            entry = self.table.get(name)
            if entry is None:
                current = self._reported(name)
                if current is not None:
                    self.table[name] = entry = Entry(current)
                    self._publish()
            if entry is None or entry.version != champ:
                if self.refused.get(name, {}).get("version") == champ:
                    continue  # refused already; the alias could not be moved back (logged), keep serving
                old = entry.version if entry else None
                self._switching[name] = asyncio.get_running_loop().create_task(self._switch(name, old, champ))

    async def _review(self, name: str, version: int) -> None:
        self._review_after[(name, version)] = time.time() + 60.0
        try:
            out = await asyncio.to_thread(promotion.review, self.registry, name, policy=self.policy, actor=ACTOR)
            self.reviews.append({"time": time.time(), **out.to_dict()})
            if out.action == "promoted":
                self._wake.set()  # pick the new champion up now
        except LifecycleError as exc:  # e.g. the challenger was already dealt with: not again
            self._review_after[(name, version)] = float("inf")
            self.reviews.append({"time": time.time(), "name": name, "action": "skipped", "reason": str(exc)})
        except Exception as exc:  # noqa: BLE001 - retried at the next poll
            self.reviews.append({"time": time.time(), "name": name, "action": "failed", "reason": _short(exc)})
        finally:
            self._reviewing.pop(name, None)

    async def _check(self, name: str, version: int) -> list[str]:
        info = await asyncio.to_thread(self.registry.version, name, version)
        if info.tags.get(CHECK_TAG) == PASSED:
            return []
        found = await asyncio.to_thread(serving_problems, self.registry, name, version, self.policy,
                                        self.settings.check_rows)
        await asyncio.to_thread(self.registry.set_tags, name, version,
                                {CHECK_TAG: PASSED if not found else "; ".join(found)[:4000]})
        return found

    async def _switch(self, name: str, old: int | None, new: int) -> None:
        rec: dict[str, Any] = {"name": name, "from": old, "to": new, "detected": time.time()}
        self._switch_recs[name] = rec
        try:
            entry = self.table.get(name)
            if entry is not None:  # replicas start loading while the version is checked
                entry.next, entry.at = new, None
                self._publish()
            try:
                found = await self._check(name, new)
            except UnknownNameError as exc:
                found = [str(exc)]
            rec["checked"] = time.time()
            if found:
                await self._refuse(name, old, new, found, rec)
                return
            self.refused.pop(name, None)
            if entry is None:  # nothing served it yet: replicas load it on first use
                self.table[name] = Entry(new)
                self._publish()
                rec.update(ready=time.time(), switched=time.time(), completed=time.time(), replicas=0)
                return
            await self._until(lambda live: all((name, new) in rep.ready for rep in live.values()),
                              self.settings.ready_timeout_s)
            waiting = sorted(r for r, rep in self._live().items() if (name, new) not in rep.ready)
            rec["ready"] = time.time()
            rec["not_ready"] = waiting
            announced = time.time()
            entry.at = announced + self.lead_s()
            rec["switched"] = entry.at
            self._publish()
            await asyncio.sleep(max(0.0, entry.at - time.time()))
            # a replica that learnt the instant after it passed served the old version a little longer:
            # a client alternating between replicas could then see the old version again. The lead
            # time follows how long replicas take to hear (lead_s), and late ones are recorded.
            live = self._live()
            heard = {r: rep.armed.get((name, new)) for r, rep in live.items()}
            late = sorted(r for r, t in heard.items() if t is None or t > entry.at)
            lags = [t - announced for t in heard.values() if t is not None]
            if lags:
                self.arm_lags.append(max(lags))
            rec["lead_s"] = round(entry.at - announced, 3)
            rec["arm_lag_s"] = round(max(lags), 3) if lags else None
            rec["late"] = late
            self.table[name] = Entry(new)
            self._publish()
            # every replica says it serves the new version
            await self._until(lambda live: all(rep.serving.get(name) == new for rep in live.values()), 10.0)
            rec["completed"] = time.time()
            rec["replicas"] = len(self._live())
            took = rec["completed"] - rec["detected"]
            await asyncio.to_thread(
                audit.record, self.registry, audit.SERVE, name, new, actor=ACTOR, previous=old, mirror=False,
                reason=f"serving on every replica ({rec['replicas']}) {took:.2f}s after the controller saw the move"
                       + (f"; replicas not ready in time: {', '.join(waiting)}" if waiting else ""),
                metrics={"switch_s": took})
        except asyncio.CancelledError:  # superseded by a later alias move before the instant
            rec["superseded"] = time.time()
            self._withdraw(name, new)
            raise
        except Exception as exc:  # noqa: BLE001 - a failed switch is retried at the next poll
            rec["error"] = _short(exc)
            self._withdraw(name, new)
            raise
        finally:
            self.swaps.append(rec)
            if self._switching.get(name) is asyncio.current_task():
                del self._switching[name]
                self._switch_recs.pop(name, None)

    def _withdraw(self, name: str, new: int) -> None:
        """Take an announced version off the table before its switch instant."""
        entry = self.table.get(name)
        if entry is not None and entry.next == new and entry.at is None:
            entry.next = None
            self._publish()

    async def _until(self, done: Any, timeout: float) -> None:
        """Wait until ``done(live replicas)`` holds (checked whenever a replica reports) or ``timeout``."""
        deadline = time.time() + timeout
        while not done(self._live()) and time.time() < deadline:
            self._replica_news.clear()
            try:
                await asyncio.wait_for(self._replica_news.wait(), timeout=0.25)
            except TimeoutError:
                pass

    async def _refuse(self, name: str, old: int | None, new: int, found: list[str], rec: dict[str, Any]) -> None:
        """``new`` must not serve: withdraw it from the table, archive it, move the alias back."""
        reason = f"version {new} cannot serve: {'; '.join(found)}"
        rec["refused"] = reason
        entry = self.table.get(name)
        if entry is not None and entry.next == new:
            entry.next, entry.at = None, None
            self._publish()
        self.refused[name] = {"version": new, "reason": reason, "time": time.time()}
        await asyncio.to_thread(audit.record, self.registry, audit.REJECT, name, new, reason=reason, actor=ACTOR,
                                previous=old, status=audit.ARCHIVED)
        if old is not None:
            try:
                await asyncio.to_thread(self.registry.set_alias, name, self.settings.alias, old)
                await asyncio.to_thread(audit.record, self.registry, audit.ROLLBACK, name, old, actor=ACTOR,
                                        previous=new, status=audit.PROMOTED,
                                        reason=f"{self.settings.alias} moved back: {reason}")
            except EyenetError as exc:
                log.warning("controller: could not move %s back to version %s: %s", name, old, exc)

    # -- retraining --------------------------------------------------------------------------
    async def _retrain_loop(self) -> None:
        while True:
            await asyncio.sleep(self.retrain.check_s)
            try:
                await self._retrain_check()
            except Exception as exc:  # noqa: BLE001 - monitor or registry away: next time
                log.warning("controller: retraining check failed: %s", _short(exc))

    async def _retrain_check(self) -> None:
        from eyenet.serve.actors import find_monitor

        monitor = find_monitor(self.settings.app)
        if monitor is None:
            return
        now = time.time()
        for name, entry in list(self.table.items()):
            if name in self._retraining or name in self._switching or entry.next is not None:
                continue
            why = await self._retrain_reason(monitor, name, entry.version, now)
            if why is None:
                continue
            last = self._last_retrain.get(name)
            if last is None:
                last = self._last_retrain[name] = await asyncio.to_thread(self._last_retrain_logged, name)
            if now - last < self.retrain.cooldown_s:
                continue
            # learn from the data as it is now: after a drift, only points that arrived since it began
            recent = await monitor.recent_values.remote(name, self.retrain.rows, self._drift_since.get(name))
            if recent is None:
                continue  # not enough yet: checked again next time
            self._retraining[name] = asyncio.get_running_loop().create_task(
                self._retrain(name, entry.version, *why, recent))

    async def _retrain_reason(self, monitor: Any, name: str, version: int,
                              now: float) -> tuple[str, dict[str, Any]] | None:
        """Why ``name`` should be retrained now (drift that persisted, poor precision, the schedule), or None."""
        d = await monitor.drifted.remote(name)
        hit = {f: r for f, r in (d or {}).get("features", {}).items() if f in self.retrain.features}
        if hit and d.get("version") == version:
            since = self._drift_since.setdefault(name, now)
            if now - since >= self.retrain.drift_for_s:
                f, r = sorted(hit.items())[0]
                return (f"drift of {f} against version {version}'s training data for {now - since:.0f}s "
                        f"({', '.join(r['drifted_by'])}: PSI {r['psi']:.2f}, KS {r['ks']:.2f})",
                        {"psi": r["psi"], "ks": r["ks"], "drift_s": now - since})
        else:
            self._drift_since.pop(name, None)
        if self.retrain.precision_below is not None:
            fb = ((await monitor.report.remote(name)).get(name) or {}).get("feedback") or {}
            p = (fb.get("window") or {}).get("precision")
            if p is not None and p < self.retrain.precision_below:
                return (f"precision {p:.2f} from operator feedback is below {self.retrain.precision_below:g}",
                        {"precision": p})
        if self.retrain.every_s is not None:
            last = self._last_retrain.get(name, 0.0)
            if now - last >= self.retrain.every_s:
                return f"scheduled every {self.retrain.every_s:g}s", {}
        return None

    def _last_retrain_logged(self, name: str) -> float:
        """When ``name`` was last retrained, from the audit log (the cool-down survives a restart)."""
        events = [e for e in promotion.history(self.registry, name) if e.event == audit.RETRAIN]
        return events[-1].time if events else 0.0

    async def _retrain(self, name: str, version: int, reason: str, metrics: dict[str, Any],
                       recent: tuple[str, list[float]]) -> None:
        """Train on recent data as a Ray task, gate the result against the champion, promote or archive it."""
        import ray

        from eyenet.lifecycle import registry as reg
        from eyenet.lifecycle import retrain

        rec: dict[str, Any] = {"name": name, "champion": version, "reason": reason, "started": time.time()}
        self._last_retrain[name] = rec["started"]
        try:
            await asyncio.to_thread(audit.record, self.registry, audit.RETRAIN, name, version, actor=ACTOR,
                                    reason=reason, metrics=metrics, mirror=False)
            series, values = recent
            root = self.retrain.root or str(reg.home() / "retrain")
            task = ray.remote(retrain.retrain).options(num_cpus=self.retrain.num_cpus, max_retries=0)
            result = await task.remote(self.registry.uri, name, series, values[-self.retrain.rows:], root)
            rec.update(version=result.version, series=series, trained=time.time(), train_s=result.seconds)
            out = await asyncio.to_thread(promotion.review, self.registry, name, policy=self.policy, actor=ACTOR)
            rec.update(outcome=out.action, gate=out.reason, reviewed=time.time())
            self.reviews.append({"time": time.time(), **out.to_dict()})
            if out.action == "promoted":
                self._drift_since.pop(name, None)
                self._wake.set()
        except Exception as exc:  # noqa: BLE001 - recorded; the cool-down keeps it from looping
            cause = getattr(exc, "cause", None) or exc
            rec.update(outcome="failed", error=_short(cause))
            log.warning("controller: retraining %s failed: %s", name, _short(cause))
        finally:
            rec["finished"] = time.time()
            self.retrains.append(rec)
            self._retraining.pop(name, None)

    # -- what replicas call ------------------------------------------------------------------
    def _message(self) -> dict[str, Any]:
        return {"epoch": [self.incarnation, self.epoch], "table": {n: e.to_list() for n, e in self.table.items()},
                "health": self._health()}

    async def follow(self, replica: str, epoch: list[Any] | None, serving: dict[str, int]) -> dict[str, Any]:
        """Long poll: the serving table once it differs from ``epoch`` (or after ``hold_s``).
        ``serving`` is what the replica serves now: the controller's view of Serve."""
        self._start()
        rep = self.replicas.setdefault(replica, Replica(seen=time.time()))
        rep.seen = time.time()
        rep.serving = dict(serving)
        self._replica_news.set()
        if epoch == [self.incarnation, self.epoch]:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=self.settings.hold_s)
            except TimeoutError:
                pass
        rep.seen = time.time()
        return self._message()

    def lead_s(self) -> float:
        """Lead time between announcing a switch instant and the instant: at least ``switch_delay_s``,
        and three times the slowest recent time a replica took to hear of one (a loaded replica's
        event loop answers late), capped at ``max_switch_delay_s``."""
        recent = max(self.arm_lags, default=0.0)
        return min(self.settings.max_switch_delay_s, max(self.settings.switch_delay_s, 3.0 * recent))

    async def armed(self, replica: str, name: str, version: int, at: float) -> None:
        """A replica knows that ``version`` of ``name`` serves from ``at`` (sent when it hears of it)."""
        self._start()
        rep = self.replicas.setdefault(replica, Replica(seen=time.time()))
        rep.seen = time.time()
        rep.armed[(name, int(version))] = time.time()
        if len(rep.armed) > 256:
            rep.armed = {k: v for k, v in rep.armed.items() if k[0] in self.table}

    async def snapshot(self) -> dict[str, list[Any]]:
        """The serving table as it stands (what a starting replica loads before it takes traffic)."""
        self._start()
        return {n: e.to_list() for n, e in self.table.items()}

    async def ready(self, replica: str, name: str, version: int) -> None:
        """A replica has ``version`` of ``name`` loaded and warm."""
        self._start()
        rep = self.replicas.setdefault(replica, Replica(seen=time.time()))
        rep.seen = time.time()
        rep.ready.add((name, int(version)))
        if len(rep.ready) > 256:
            rep.ready = {k for k in rep.ready if k[0] in self.table}
        self._replica_news.set()

    async def resolve(self, name: str) -> list[Any]:
        """The entry of a model the table does not hold yet (a replica's first request for it)."""
        self._start()
        if name not in self.table:
            async with self._lock:
                await self._sync()
            task = self._switching.get(name)
            if task is not None:
                await asyncio.wait_for(asyncio.shield(task), timeout=self.settings.ready_timeout_s)
        if name not in self.table:
            if name in self.refused:
                raise NotServableError(f"{name}: {self.refused[name]['reason']}")
            await asyncio.to_thread(self.registry.version, name, alias=self.settings.alias)  # raises UnknownNameError
            raise NotServableError(f"{name}: its {self.settings.alias} is not served yet")
        return self.table[name].to_list()

    # -- what operators call -----------------------------------------------------------------
    async def sync(self, wait: bool = True, timeout: float = 60.0) -> dict[str, Any]:
        """Read the aliases now (instead of at the next poll); with ``wait``, until the switches and
        reviews this starts are done."""
        self._start()
        async with self._lock:
            await self._sync()
        if wait:
            deadline = time.time() + timeout
            while (self._switching or self._reviewing) and time.time() < deadline:
                pending = [*self._switching.values(), *self._reviewing.values()]
                await asyncio.wait(pending, timeout=max(0.0, deadline - time.time()))
                if not self._switching and not self._reviewing:
                    async with self._lock:  # a review may have moved the champion
                        await self._sync()
        return await self.status()

    async def _lifecycle(self, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run a lifecycle step against the registry, then switch to its outcome before answering. A
        version the serving check refuses (one forced past the gate) is an error naming the reason."""
        started = time.time()
        out = await asyncio.to_thread(fn, self.registry, *args, **kwargs)
        status = await self.sync(wait=True)
        refused = self.refused.get(out.name)
        if refused and refused["version"] == out.champion and refused["time"] >= started:
            raise GateRejectedError(f"{out.name}: {refused['reason']}; champion moved back to version "
                                    f"{status['table'].get(out.name, {}).get('version')}")
        return {"outcome": out.to_dict(), "serving": status["table"].get(out.name)}

    async def promote(self, name: str, version: int | None = None, *, force: bool = False, reason: str = "",
                      actor: str | None = None) -> dict[str, Any]:
        self._start()
        return await self._lifecycle(promotion.promote, name, version, force=force, reason=reason,
                                     actor=actor or ACTOR, policy=self.policy)

    async def review(self, name: str, actor: str | None = None) -> dict[str, Any]:
        self._start()
        return await self._lifecycle(promotion.review, name, actor=actor or ACTOR, policy=self.policy)

    async def rollback(self, name: str, *, to_version: int | None = None, reason: str = "",
                       actor: str | None = None) -> dict[str, Any]:
        self._start()
        return await self._lifecycle(promotion.rollback, name, to_version=to_version, reason=reason,
                                     actor=actor or ACTOR)

    async def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        events = await asyncio.to_thread(promotion.history, self.registry, name, limit)
        return [e.to_dict() for e in events]

    def _health(self) -> dict[str, Any]:
        return {**self.health, "ok": self.health["registry_ok"] is not False}

    async def status(self) -> dict[str, Any]:
        self._start()
        now = time.time()
        live = self._live()
        return {
            "incarnation": self.incarnation,
            "started": self.started,
            "health": self._health(),
            "table": {n: {"version": e.serving(now), **({"next": e.next} if e.next is not None else {})}
                      for n, e in sorted(self.table.items())},
            "replicas": {r: {"serving": rep.serving, "seen_s_ago": round(now - rep.seen, 2)}
                         for r, rep in sorted(live.items())},
            "switching": sorted(self._switching),
            "reviewing": sorted(self._reviewing),
            "refused": self.refused,
            "swaps": list(self.swaps)[-20:],
            "reviews": list(self.reviews)[-20:],
            "retraining": sorted(self._retraining),
            "retrains": list(self.retrains)[-20:],
        }

    async def ping(self) -> str:
        self._start()
        return self.incarnation


def settings_from(config: Any) -> dict[str, Any]:
    """Controller settings from an :class:`eyenet.serving.settings.AppConfig`."""
    return {**config.controller.model_dump(), "alias": config.alias, "app": config.name}


