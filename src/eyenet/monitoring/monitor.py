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
from collections import defaultdict, deque
from typing import Any

import numpy as np

from eyenet.monitoring import drift as dr
from eyenet.monitoring import metrics as m
from eyenet.lifecycle.registry import Registry
from eyenet.monitoring.feedback import Feedback, FeedbackTracker, default_path
from eyenet.monitoring.settings import MonitorSettings

log = logging.getLogger(__name__)

#: a replica whose metrics were not pushed for this long is left out of /metrics
STALE_S = 60.0


class Outbox:
    """What a router replica scored since its last push, per (model, version)."""

    def __init__(self, max_series_points: int = 4096) -> None:
        self.max_series_points = max_series_points
        self._batch: dict[tuple[str, int], dict[str, Any]] = {}

    def add(self, name: str, version: int, values: np.ndarray, scores: Any, series: str | None = None) -> None:
        b = self._batch.get((name, version))
        if b is None:
            b = self._batch[(name, version)] = {"value": [], "calibrated": [], "score": [], "points": 0, "alarms": 0,
                                                "series": defaultdict(list), "last": 0.0}
        b["value"].append(np.asarray(values, dtype=float))
        b["calibrated"].append(np.asarray(scores.calibrated, dtype=float))
        b["score"].append(np.asarray(scores.score, dtype=float))
        b["points"] += len(values)
        b["alarms"] += int(np.asarray(scores.alarm).sum())
        b["last"] = time.time()
        if series is not None:
            kept = b["series"][series]
            kept.extend(float(v) for v in values)
            if len(kept) > self.max_series_points:
                del kept[: len(kept) - self.max_series_points]

    def take(self) -> list[dict[str, Any]]:
        """The batch since the last call, oldest (model, version) first, arrays joined."""
        batch, self._batch = self._batch, {}
        out = []
        for (name, version), b in sorted(batch.items(), key=lambda kv: kv[1]["last"]):
            out.append({"model": name, "version": version, "points": b["points"], "alarms": b["alarms"],
                        **{f: np.concatenate(b[f]) for f in ("value", "calibrated", "score")},
                        "series": dict(b["series"])})
        return out


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

    async def push(self, replica: str, batch: list[dict[str, Any]], metrics_text: str | None = None) -> None:
        """A router replica's scored points since its last push, and its metrics."""
        self.pushes += 1
        if metrics_text is not None:
            self.metrics_text[replica] = (time.time(), metrics_text)
        for b in batch:
            name, version = b["model"], int(b["version"])
            self.feedback.record_alarms(name, b["points"], b["alarms"])
            for sid, values in b["series"].items():
                kept = self.recent[name].get(sid)
                if kept is None:
                    kept = self.recent[name][sid] = deque(maxlen=self.recent_points)
                    self.recent_at[name][sid] = deque(maxlen=self.recent_points)
                kept.extend(values)
                self.recent_at[name][sid].extend([time.time()] * len(values))
                self.recent_seen[name][sid] = time.time()
            if await self._reference(name, version) and self.versions.get(name) == version:
                for f in dr.FEATURES:
                    self.drift.observe(name, f, b[f])

    async def record_feedback(self, fb: Feedback) -> dict[str, Any]:
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
