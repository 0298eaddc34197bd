"""The app-wide monitor: drift windows, operator feedback, alarm counts and the metrics of every router replica.

Drift and precision are properties of a model across all the traffic it
serves, not of one router replica, and a Prometheus scrape reaches one replica
at a time. So each app has one monitor, a detached named Ray actor
(:func:`eyenet.serve.actors.get_monitor`). Router replicas collect what they
scored in an :class:`Outbox` (appending to lists: nothing on the request path
waits) and push it every ``push_s`` with their own metrics text; the monitor
feeds a :class:`~eyenet.monitoring.drift.DriftMonitor` (its reference follows the version
that serves), a :class:`~eyenet.monitoring.feedback.FeedbackTracker`, and keeps the last
points of each live series (what a retraining learns from). ``/metrics`` on
any replica answers :meth:`Monitor.metrics`: every replica's series labelled
``replica``, plus the app-wide drift and feedback gauges.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict, deque
from typing import Any

import numpy as np

from eyenet.core.errors import InvalidInputError
from eyenet.core.reference import FEATURES
from eyenet.monitoring import drift as dr
from eyenet.monitoring import history
from eyenet.monitoring import metrics as m
from eyenet.lifecycle.registry import Registry, split_name
from eyenet.monitoring.feedback import Feedback, FeedbackTracker, default_path
from eyenet.monitoring.settings import MonitorSettings

log = logging.getLogger(__name__)

#: a replica whose metrics were not pushed for this long is left out of /metrics
STALE_S = 60.0


class Outbox:
    """What a router replica scored since its last push, per (model, version).

    Per series it keeps the last ``max_series_points`` values (retraining data) and which points
    were scored (their positions in the stream and their timestamps, when sent: feedback may name
    only those). At most ``max_series`` series per push interval; the points of further ones still
    count but their series are left out (counted in ``dropped`` and
    ``eyenet_evictions_total{structure="outbox"}``)."""

    def __init__(self, max_series_points: int = 4096, max_series: int = 20_000, view_points: int = 10_000) -> None:
        self.max_series_points = max_series_points
        self.max_series = max_series
        self.view_points = view_points  # points of a series the console may draw (its last ones)
        self.alerts: deque[dict[str, Any]] = deque(maxlen=1000)  # alert transitions since the last push
        self.dropped = 0
        self._series = 0
        self._batch: dict[tuple[str, int], dict[str, Any]] = {}

    def add(self, name: str, version: int, values: np.ndarray, scores: Any, series: str | None = None, *,
            first: int = 0, timestamps: np.ndarray | None = None, scored: str | None = None,
            view: tuple[list[dict[str, Any]], np.ndarray, list[str]] | None = None) -> None:
        """Points of ``series`` (its live values, for retraining) scored by ``name`` v``version``:
        ``first`` is the stream position of the first one (its ``seen`` before), ``timestamps`` theirs
        (datetime64, if sent). ``scored``: the series they are recorded under for feedback when they
        are not a live series' values (``/v1/detect``). ``view``: the points as answered, their
        stream positions and the model's members (a live series' history for the console)."""
        b = self._batch.get((name, version))
        if b is None:
            keep = self.max_series_points  # a series' last values: a deque drops the oldest at no cost
            b = self._batch[(name, version)] = {"value": [], "calibrated": [], "score": [], "points": 0, "alarms": 0,
                                                "series": defaultdict(lambda: deque(maxlen=keep)), "scored": {},
                                                "views": defaultdict(list), "last": 0.0}
        b["value"].append(np.asarray(values, dtype=float))
        b["calibrated"].append(np.asarray(scores.calibrated, dtype=float))
        b["score"].append(np.asarray(scores.score, dtype=float))
        b["points"] += len(values)
        b["alarms"] += int(np.asarray(scores.alarm).sum())
        b["last"] = time.time()
        sid = series if series is not None else scored
        if sid is None:
            return
        record = b["scored"].get(sid)
        if record is None:
            if self._series >= self.max_series:
                self.dropped += 1
                m.EVICTIONS.labels("outbox").inc()
                return
            self._series += 1
            record = b["scored"][sid] = {"ranges": [], "timestamps": []}
        record["ranges"].append((int(first), len(values)))
        if len(record["ranges"]) > 64:
            del record["ranges"][0]
        if timestamps is not None:
            ts = np.asarray(timestamps).astype("datetime64[ns]").astype("int64").tolist()
            record["timestamps"].extend(ts[-self.max_series_points:])
            if len(record["timestamps"]) > self.max_series_points:
                del record["timestamps"][: len(record["timestamps"]) - self.max_series_points]
        if series is not None:
            b["series"][series].extend(np.asarray(values, dtype=float)[-self.max_series_points:].tolist())
            if view is not None:  # made columns at the push, off the request path
                points, index, families = view
                k = self.view_points
                b["views"][series].append((points[-k:], np.asarray(values, dtype=float)[-k:], index[-k:],
                                           None if timestamps is None else timestamps[-k:], families))

    def alert(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Alert transitions (``(tenant, alert)``, as :class:`eyenet.serving.alerts.AlertSender` sends
        them) for the app's recent-alerts list."""
        for tenant, a in items:
            labels, notes = a.get("labels", {}), a.get("annotations", {})
            self.alerts.append({"tenant": tenant, "series": labels.get("series", ""), "model": labels.get("model"),
                                "severity": labels.get("severity"), "state": "resolved" if "endsAt" in a else "firing",
                                "starts_at": a.get("startsAt"), "ends_at": a.get("endsAt"),
                                "summary": notes.get("summary"), "at": time.time()})

    def take_alerts(self) -> list[dict[str, Any]]:
        out = list(self.alerts)
        self.alerts.clear()
        return out

    def take(self) -> list[dict[str, Any]]:
        """The batch since the last call, oldest (model, version) first, arrays joined."""
        return self.build(self.detach())

    def detach(self) -> dict[tuple[str, int], dict[str, Any]]:
        """The batch since the last call as it was gathered (cheap: on the event loop that adds to it);
        :meth:`build` makes it what the monitor takes, on any thread."""
        batch, self._batch, self._series = self._batch, {}, 0
        return batch

    @staticmethod
    def build(batch: dict[tuple[str, int], dict[str, Any]]) -> list[dict[str, Any]]:
        """A :meth:`detach`-ed batch, oldest (model, version) first, arrays joined."""
        out = []
        for (name, version), b in sorted(batch.items(), key=lambda kv: kv[1]["last"]):
            out.append({"model": name, "version": version, "points": b["points"], "alarms": b["alarms"],
                        **{f: np.concatenate(b[f]) for f in ("value", "calibrated", "score")},
                        "series": {k: list(v) for k, v in b["series"].items()}, "scored": b["scored"],
                        "views": history.table(b["views"])})
        return out


class Scored:
    """Which points of one series a model scored: the last ``max_ranges`` runs of stream positions
    (``[first, first + n)``) and the last ``max_timestamps`` timestamps (int64 ns, when sent)."""

    __slots__ = ("ranges", "timestamps", "max_ranges", "max_timestamps")

    def __init__(self, max_ranges: int, max_timestamps: int) -> None:
        self.ranges: list[list[int]] = []  # [start, end), in arrival order, adjacent runs merged
        self.timestamps = np.empty(0, dtype=np.int64)
        self.max_ranges = max_ranges
        self.max_timestamps = max_timestamps

    def add(self, ranges: list[tuple[int, int]], timestamps: list[int]) -> None:
        for first, n in ranges:
            if self.ranges and self.ranges[-1][1] == first:
                self.ranges[-1][1] = first + n
            else:
                self.ranges.append([first, first + n])
        if len(self.ranges) > self.max_ranges:
            del self.ranges[: len(self.ranges) - self.max_ranges]
        if timestamps:
            self.timestamps = np.concatenate([self.timestamps, np.asarray(timestamps, dtype=np.int64)])
            if len(self.timestamps) > self.max_timestamps:
                self.timestamps = self.timestamps[-self.max_timestamps:]

    def unscored_indices(self, indices: list[int]) -> list[int]:
        return [i for i in indices if not any(a <= i < b for a, b in self.ranges)]

    def unscored_timestamps(self, ns: list[int]) -> list[int]:
        if not ns:
            return []
        hit = np.isin(np.asarray(ns, dtype=np.int64), self.timestamps)
        return [t for t, h in zip(ns, hit.tolist()) if not h]

    @property
    def nbytes(self) -> int:
        return 16 * len(self.ranges) + self.timestamps.nbytes


class Monitor:
    """The actor's logic (see the module docstring)."""

    def __init__(self, mlflow_uri: str | None, settings: MonitorSettings | dict[str, Any] | None = None) -> None:
        # over Ray the settings come as a dict (MonitorSettings.model_dump()); unknown keys are an error
        s = settings if isinstance(settings, MonitorSettings) else MonitorSettings.model_validate(settings or {})
        self.settings = s
        self.registry = Registry(mlflow_uri)
        self.drift = dr.DriftMonitor(window=s.drift_window, min_points=s.drift_min_points,
                                     thresholds=dr.Thresholds(**s.drift_thresholds))
        self.feedback = FeedbackTracker(s.feedback_path or default_path())
        self.recent_points = s.recent_points
        self.versions: dict[str, int] = {}  # model -> version whose reference the drift windows use
        self.no_reference: set[tuple[str, int]] = set()
        self.recent: dict[str, dict[str, deque[float]]] = defaultdict(dict)
        self.recent_at: dict[str, dict[str, deque[float]]] = defaultdict(dict)  # when each point arrived
        self.recent_seen: dict[str, dict[str, float]] = defaultdict(dict)
        self.metrics_text: dict[str, tuple[float, str]] = {}
        self._ref_lock: asyncio.Lock | None = None
        self.pushes = 0
        # bounds: live series (recent values and scored points) least recently pushed first, and models
        self._series: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.scored: dict[tuple[str, str], Scored] = {}
        self.recent_total = 0  # values kept in `recent`, all series
        self._models: OrderedDict[str, None] = OrderedDict()
        self.evicted = {"series": 0, "models": 0}
        self.history = history.SeriesHistory(s.history_points)  # what the console draws
        self.alerts: deque[dict[str, Any]] = deque(maxlen=s.recent_alerts)  # the newest alert transitions

    async def _reference(self, name: str, version: int) -> bool:
        """Point the drift windows of ``name`` at ``version``'s reference (loaded once)."""
        if self.versions.get(name) == version:
            return True
        if (name, version) in self.no_reference:
            return False
        if self._ref_lock is None:
            self._ref_lock = asyncio.Lock()
        async with self._ref_lock:
            if self.versions.get(name) == version:
                return True
            try:
                ref = await asyncio.to_thread(self.registry.drift_reference, name, version)
            except Exception as exc:  # noqa: BLE001 - MLflow away: retried with the next push
                log.warning("monitor: no drift reference for %s v%s yet: %s", name, version, exc)
                return False
            if ref is None:
                self.no_reference.add((name, version))
                return False
            self.drift.set_reference(name, ref)  # new windows: the old version's points do not count
            self.versions[name] = version
            return True

    async def push(self, replica: str, batch: list[dict[str, Any]], metrics_text: str | None = None,
                   alerts: list[dict[str, Any]] | None = None) -> None:
        """A router replica's scored points since its last push, its metrics and its alert transitions."""
        self.pushes += 1
        self.alerts.extend(alerts or ())
        if metrics_text is not None:
            self.metrics_text[replica] = (time.time(), metrics_text)
        s = self.settings
        for b in batch:
            name, version = b["model"], int(b["version"])
            self._touch_model(name)
            self.feedback.record_alarms(name, b["points"], b["alarms"])
            for sid, values in b["series"].items():
                self._touch(name, sid)
                kept = self.recent[name].get(sid)
                if kept is None:
                    kept = self.recent[name][sid] = deque(maxlen=self.recent_points)
                    self.recent_at[name][sid] = deque(maxlen=self.recent_points)
                before = len(kept)
                kept.extend(values)
                self.recent_total += len(kept) - before
                self.recent_at[name][sid].extend([time.time()] * len(values))
                self.recent_seen[name][sid] = time.time()
            for sid, cols in history.rows(b["views"]):
                self._touch(name, sid)
                self.history.add(name, sid, version, cols)
            for sid, record in b.get("scored", {}).items():
                self._touch(name, sid)
                sc = self.scored.get((name, sid))
                if sc is None:
                    sc = self.scored[(name, sid)] = Scored(s.scored_ranges, s.scored_timestamps)
                sc.add(record["ranges"], record["timestamps"])
            self._evict_series()
            if await self._reference(name, version) and self.versions.get(name) == version:
                for f in FEATURES:
                    self.drift.observe(name, f, b[f])

    # -- bounds ----------------------------------------------------------------------------------
    def _touch(self, name: str, sid: str) -> None:
        key = (name, sid)
        if key in self._series:
            self._series.move_to_end(key)
        else:
            self._series[key] = None

    def _touch_model(self, name: str) -> None:
        if name in self._models:
            self._models.move_to_end(name)
            return
        self._models[name] = None
        while len(self._models) > self.settings.max_models:
            old, _ = self._models.popitem(last=False)
            self._forget_model(old)

    def _forget_model(self, name: str) -> None:
        """Drop a model's drift windows and live series (the least recently pushed model, over ``max_models``)."""
        self.drift.drop(name)
        self.versions.pop(name, None)
        self.no_reference = {k for k in self.no_reference if k[0] != name}
        for key in [k for k in self._series if k[0] == name]:
            self._forget_series(key)
        for d in (self.recent, self.recent_at, self.recent_seen):
            d.pop(name, None)
        self.evicted["models"] += 1
        m.EVICTIONS.labels("monitor_models").inc()

    def _forget_series(self, key: tuple[str, str]) -> None:
        name, sid = key
        self._series.pop(key, None)
        self.scored.pop(key, None)
        kept = self.recent.get(name, {}).pop(sid, None)
        if kept is not None:
            self.recent_total -= len(kept)
        self.recent_at.get(name, {}).pop(sid, None)
        self.recent_seen.get(name, {}).pop(sid, None)
        self.history.forget(name, sid)

    def _evict_series(self) -> None:
        """Least recently pushed series out until ``max_series`` and ``max_recent_points`` hold."""
        s = self.settings
        while self._series and (len(self._series) > s.max_series or self.recent_total > s.max_recent_points
                                or self.history.total > s.max_history_points):
            key = next(iter(self._series))
            self._forget_series(key)
            self.evicted["series"] += 1
            m.EVICTIONS.labels("monitor_series").inc()

    def stats(self) -> dict[str, Any]:
        """Sizes and counters of the monitor's bounded structures (``/healthz``)."""
        s = self.settings
        return {"series": len(self._series), "max_series": s.max_series, "recent_points": self.recent_total,
                "max_recent_points": s.max_recent_points, "models": len(self._models), "max_models": s.max_models,
                "scored_bytes": sum(sc.nbytes for sc in self.scored.values()),
                "history_points": self.history.total, "max_history_points": s.max_history_points,
                "evicted_series": self.evicted["series"], "evicted_models": self.evicted["models"]}

    async def health(self) -> dict[str, Any]:
        return {"ok": True, **self.stats()}

    # -- feedback --------------------------------------------------------------------------------
    def unscored(self, fb: Feedback) -> list[Any]:
        """The points ``fb`` names that this monitor never saw ``fb.model`` score for ``fb.series``
        (within what it keeps: the last runs of positions and timestamps of each live series)."""
        sc = self.scored.get((fb.model, fb.series))
        if fb.indices is not None:
            return list(fb.indices) if sc is None else sc.unscored_indices(fb.indices)
        stamps = [_ns(t) for t in fb.timestamps or []]
        missing = set(stamps if sc is None else sc.unscored_timestamps(stamps))
        return [t for t, ns in zip(fb.timestamps or [], stamps) if ns in missing]

    async def record_feedback(self, fb: Feedback) -> dict[str, Any]:
        """Count a label on points this monitor saw scored (waiting up to ``feedback_wait_s`` for a push
        in flight); labels naming any point never scored are refused whole, naming those points."""
        missing = self.unscored(fb)
        deadline = time.monotonic() + self.settings.feedback_wait_s
        while missing and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            missing = self.unscored(fb)
        if missing:
            where = "indices" if fb.indices is not None else "timestamps"
            shown = ", ".join(str(p) for p in missing[:10]) + (", ..." if len(missing) > 10 else "")
            raise InvalidInputError(f"{where}: {fb.model} never scored these points of series {fb.series!r}: "
                                    f"[{shown}] (feedback names points the service scored, as it answered them)")
        self.feedback.record(fb)
        return self.feedback.report(fb.model).get(fb.model, {})

    async def report(self, model: str | None = None) -> dict[str, Any]:
        """Drift (per feature: test scores, drifted, ready) and feedback figures, per model."""
        drift = {name: {f: r.to_dict() for f, r in feats.items()} for name, feats in self.drift.report(model).items()}
        fb = self.feedback.report(model)
        names = sorted(set(drift) | set(fb) | set(self.versions))
        if model is not None:
            names = [n for n in names if n == model]
        return {n: {"version": self.versions.get(n), "drift": drift.get(n, {}),
                    "drifted": any(r["drifted"] for r in drift.get(n, {}).values()),
                    "feedback": fb.get(n)} for n in names}

    async def drifted(self, model: str) -> dict[str, Any] | None:
        """The drifted features of ``model`` with their scores, or None when it has not drifted."""
        try:
            report = self.drift.report(model).get(model, {})
        except Exception:  # noqa: BLE001 - no reference
            return None
        hit = {f: r.to_dict() for f, r in report.items() if r.drifted}
        return {"version": self.versions.get(model), "features": hit} if hit else None

    async def recent_values(self, model: str, min_points: int = 0,
                            since: float | None = None) -> tuple[str, list[float]] | None:
        """The live series of ``model`` with the most points kept (arrived after ``since``, if given):
        what a retraining learns from. None when no series has ``min_points``."""
        series = self.recent.get(model) or {}
        at = self.recent_at.get(model) or {}

        def points(sid: str) -> list[float]:
            values = list(series[sid])
            if since is None:
                return values
            times = list(at[sid])
            first = next((i for i, t in enumerate(times) if t >= since), len(times))
            return values[first:]

        best = max(((points(s), self.recent_seen[model].get(s, 0), s) for s in series),
                   key=lambda c: (len(c[0]), c[1]), default=None)
        if best is None or len(best[0]) < min_points:
            return None
        return best[2], best[0]

    async def recent_alerts(self, tenants: list[str] | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The newest alert transitions (fired, resolved) first, of ``tenants`` only (None: all)."""
        out = [a for a in reversed(self.alerts) if tenants is None or a["tenant"] in tenants]
        return out[:limit]

    # -- the console's series ----------------------------------------------------------------------
    async def series(self, tenants: list[str] | None = None, match: str = "", limit: int = 100) -> list[dict[str, Any]]:
        """Live series with kept points, most recently pushed first: of ``tenants`` only (None: all),
        whose id contains ``match`` (case-insensitive); at most ``limit``."""
        needle = match.lower()
        out = []
        for name, sid in reversed(self.history.keys()):
            tenant, group, _ = split_name(name)
            if (tenants is not None and tenant not in tenants) or needle not in sid.lower():
                continue
            out.append({"tenant": tenant, "group": group, "id": sid, "model": name,
                        **self.history.summary(name, sid)})
            if len(out) >= limit:
                break
        return out

    async def series_points(self, name: str, sid: str, limit: int = 10_000) -> dict[str, Any] | None:
        """The last ``limit`` points of series ``sid`` as ``name`` scored them, oldest first (None: not kept)."""
        points = self.history.points(name, sid, limit)
        if points is None:
            return None
        tenant, group, _ = split_name(name)
        return {"id": sid, "tenant": tenant, "group": group, "model": name,
                "version": self.history.summary(name, sid)["version"], "points": points}

    async def metrics(self, replica: str | None = None, text: str | None = None) -> str:
        """The app's Prometheus exposition: every replica's series (label ``replica``) and the app-wide ones
        (``replica``/``text``: the asking replica's metrics as of now)."""
        if replica is not None and text is not None:
            self.metrics_text[replica] = (time.time(), text)
        m.publish_drift(self.drift)
        m.publish_feedback(self.feedback)
        now = time.time()
        texts = {r: t for r, (at, t) in self.metrics_text.items() if now - at <= STALE_S}
        return merge_expositions(m.exposition().decode(), texts)

    async def ping(self) -> int:
        return self.pushes


def _ns(timestamp: str) -> int:
    """ISO 8601 text (as :func:`eyenet.serving.schemas.check_feedback` makes it) -> int64 ns UTC."""
    return int(np.datetime64(timestamp.replace("+00:00", "").rstrip("Z"), "ns").astype("int64"))


def merge_expositions(own: str, replicas: dict[str, str]) -> str:
    """One exposition from the monitor's own text and each replica's, the latter labelled ``replica``."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Metric] = {}
    for replica, text in [(None, own), *sorted(replicas.items())]:
        for fam in text_string_to_metric_families(text):
            if fam.name.endswith("_created"):  # creation times of counters: noise to a scraper
                continue
            f = families.get(fam.name)
            if f is None:
                f = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            for s in fam.samples:
                labels = dict(s.labels)
                if replica is not None:
                    labels["replica"] = replica
                f.add_sample(s.name, labels, s.value, s.timestamp, s.exemplar)

    class _Merged:
        def collect(self):  # noqa: ANN202 - prometheus-client's collector protocol
            return list(families.values())

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Merged())
    return generate_latest(reg).decode()
