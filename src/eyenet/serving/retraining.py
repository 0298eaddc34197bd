"""The retraining scheduler: when a served model is retrained, and the retraining itself.

Every ``check_s`` the scheduler asks the app's monitor about each served model
(not while it switches): drift of a watched feature against the served
version's training data that persisted ``drift_for_s``, operator-feedback
precision below ``precision_below``, or the schedule (``every_s``). At most
one retraining per model per ``cooldown_s`` (the last one is read back from the
audit log after a restart). A retraining is recorded (RETRAIN event with the
reason), learns from the monitor's recent points (after a drift, only those
that arrived since it began), and its result goes through the gate against the
champion (:class:`~eyenet.serving.reviews.Reviews`).

The monitor and the way a retraining runs are given: ``monitor()`` returns an
object whose coroutines ``drifted``, ``report`` and ``recent_values`` answer
like :class:`eyenet.monitoring.monitor.Monitor`'s (None when there is no
monitor), and ``launch`` runs :func:`eyenet.lifecycle.retrain.retrain` (the
Ray wiring runs it as a Ray task; the default runs it in a thread).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Awaitable, Callable

from eyenet.lifecycle import audit, promotion
from eyenet.lifecycle.paths import home
from eyenet.lifecycle.registry import Registry
from eyenet.lifecycle.settings import RetrainSettings
from eyenet.serving.admission import ACTOR
from eyenet.serving.reviews import Reviews
from eyenet.serving.switching import short

log = logging.getLogger(__name__)

#: why to retrain (for the audit log) and the numbers behind it
Reason = tuple[str, dict[str, Any]]
#: ``launch(num_cpus, mlflow_uri, name, series, values, root, audit_uri=...)``: a RetrainResult
Launch = Callable[..., Awaitable[Any]]


async def launch_in_thread(num_cpus: float, *args: Any, **kwargs: Any) -> Any:
    """Run :func:`eyenet.lifecycle.retrain.retrain` in a thread of this process (``num_cpus`` is ignored)."""
    from eyenet.lifecycle import retrain

    return await asyncio.to_thread(retrain.retrain, *args, **kwargs)


class Triggers:
    """Whether a served model should be retrained now: decisions only, from what the monitor reported."""

    def __init__(self, settings: RetrainSettings) -> None:
        self.settings = settings
        self.drift_since: dict[str, float] = {}  # model -> when its drift was first seen
        self.last: dict[str, float] = {}  # model -> when it was last retrained

    def drift(self, name: str, version: int, drifted: dict[str, Any] | None, now: float) -> Reason | None:
        """Drift of a watched feature against ``version`` that has lasted ``drift_for_s``."""
        hit = {f: r for f, r in (drifted or {}).get("features", {}).items() if f in self.settings.features}
        if not hit or drifted.get("version") != version:
            self.drift_since.pop(name, None)
            return None
        since = self.drift_since.setdefault(name, now)
        if now - since < self.settings.drift_for_s:
            return None
        f, r = sorted(hit.items())[0]
        return (f"drift of {f} against version {version}'s training data for {now - since:.0f}s "
                f"({', '.join(r['drifted_by'])}: PSI {r['psi']:.2f}, KS {r['ks']:.2f})",
                {"psi": r["psi"], "ks": r["ks"], "drift_s": now - since})

    def precision(self, report: dict[str, Any] | None) -> Reason | None:
        """Operator-feedback precision (from the monitor's report of the model) below ``precision_below``."""
        fb = (report or {}).get("feedback") or {}
        p = (fb.get("window") or {}).get("precision")
        if p is None or self.settings.precision_below is None or p >= self.settings.precision_below:
            return None
        return f"precision {p:.2f} from operator feedback is below {self.settings.precision_below:g}", {"precision": p}

    def schedule(self, name: str, now: float) -> Reason | None:
        every = self.settings.every_s
        if every is None or now - self.last.get(name, 0.0) < every:
            return None
        return f"scheduled every {every:g}s", {}

    def cooling(self, name: str, now: float) -> bool:
        """Retrained less than ``cooldown_s`` ago (:attr:`last` must know ``name``)."""
        return now - self.last[name] < self.settings.cooldown_s

    def retrained(self, name: str, when: float) -> None:
        self.last[name] = when

    def promoted(self, name: str) -> None:
        """A retrained version serves: its drift is a new story."""
        self.drift_since.pop(name, None)


class RetrainScheduler:
    """The retraining loop of one controller. ``served()`` lists (model, version) of the models served
    and not being switched."""

    def __init__(self, settings: RetrainSettings, registry: Registry, reviews: Reviews, *,
                 served: Callable[[], list[tuple[str, int]]], monitor: Callable[[], Any | None] | None = None,
                 launch: Launch | None = None, audit_uri: str | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.reviews = reviews
        self.served = served
        self.monitor = monitor or (lambda: None)
        self.launch = launch or launch_in_thread
        self.audit_uri = audit_uri
        self.triggers = Triggers(settings)
        self.retraining: dict[str, asyncio.Task] = {}
        self.retrains: deque[dict[str, Any]] = deque(maxlen=50)

    def busy(self, name: str) -> bool:
        return name in self.retraining

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.check_s)
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - monitor or registry away: next time
                log.warning("controller: retraining check failed: %s", short(exc))

    async def check(self) -> list[str]:
        """Start the retrainings that are due; the models they are of."""
        monitor = self.monitor()
        if monitor is None:
            return []
        now = time.time()
        started = []
        for name, version in self.served():
            if name in self.retraining:
                continue
            why = await self.reason(monitor, name, version, now)
            if why is None or await self._cooling(name, now):
                continue
            # learn from the data as it is now: after a drift, only points that arrived since it began
            recent = await monitor.recent_values(name, self.settings.rows, self.triggers.drift_since.get(name))
            if recent is None:
                continue  # not enough yet: checked again next time
            self.retraining[name] = asyncio.get_running_loop().create_task(
                self._retrain(name, version, *why, recent))
            started.append(name)
        return started

    async def reason(self, monitor: Any, name: str, version: int, now: float) -> Reason | None:
        """Why ``name`` should be retrained now (drift that persisted, poor precision, the schedule), or None."""
        why = self.triggers.drift(name, version, await monitor.drifted(name), now)
        if why is None and self.settings.precision_below is not None:
            why = self.triggers.precision((await monitor.report(name)).get(name))
        return why or self.triggers.schedule(name, now)

    async def _cooling(self, name: str, now: float) -> bool:
        if name not in self.triggers.last:  # after a restart: from the audit log
            self.triggers.retrained(name, await asyncio.to_thread(self.last_logged, name))
        return self.triggers.cooling(name, now)

    def last_logged(self, name: str) -> float:
        """When ``name`` was last retrained, from the audit log (the cool-down survives a restart)."""
        events = [e for e in promotion.history(self.registry, name) if e.event == audit.RETRAIN]
        return events[-1].time if events else 0.0

    async def _retrain(self, name: str, version: int, reason: str, metrics: dict[str, Any],
                       recent: tuple[str, list[float]]) -> None:
        """Train on recent data, gate the result against the champion, promote or archive it."""
        rec: dict[str, Any] = {"name": name, "champion": version, "reason": reason, "started": time.time()}
        self.triggers.retrained(name, rec["started"])
        try:
            await asyncio.to_thread(audit.record, self.registry, audit.RETRAIN, name, version, actor=ACTOR,
                                    reason=reason, metrics=metrics, mirror=False)
            series, values = recent
            root = self.settings.root or str(home() / "retrain")
            result = await self.launch(self.settings.num_cpus, self.registry.uri, name, series,
                                       values[-self.settings.rows:], root, audit_uri=self.audit_uri)
            rec.update(version=result.version, series=series, trained=time.time(), train_s=result.seconds)
            if not self.settings.auto_promote:  # an operator reviews it (POST /v1/models/{name}/review)
                self.reviews.hold(name, result.version)
                rec.update(outcome="challenger", gate="waiting for an operator's review (retrain.auto_promote is off)")
                return
            out = await self.reviews.review(name)
            rec.update(outcome=out.action, gate=out.reason, reviewed=time.time())
            if out.action == "promoted":
                self.triggers.promoted(name)
        except Exception as exc:  # noqa: BLE001 - recorded; the cool-down keeps it from looping
            cause = getattr(exc, "cause", None) or exc  # a Ray task's error wraps its cause
            rec.update(outcome="failed", error=short(cause))
            log.warning("controller: retraining %s failed: %s", name, short(cause))
        finally:
            rec["finished"] = time.time()
            self.retrains.append(rec)
            self.retraining.pop(name, None)
