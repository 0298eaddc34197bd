"""Alarms out: one alert per series incident, to Alertmanager's v2 API and to signed webhooks.

**Incidents** (:class:`Incidents`). A series' first alarm opens an incident and fires its alert;
more alarms of the series keep the same alert (Alertmanager deduplicates by label set, and the
label set of an incident does not change); ``resolve_after`` consecutive scored points below the
model's alarm threshold close it, and the alert resolves with ``endsAt`` at the point that closed
it. While it lasts the alert is posted again every ``resend_s``, so Alertmanager never resolves it
on its own (``resolve_timeout``). An alarm of severity ``critical`` (its score reaches
``critical_score``) escalates the incident: the ``warning`` alert resolves and a ``critical`` one
fires (an incident never goes back down).

Labels: ``alertname="EyeNetAnomaly"``, ``tenant``, ``group``, ``model`` (the model's name), the
series' own labels (remote_write series) or ``series`` (its id), and ``severity``. Annotations:
``value``, ``expected`` (what the model expected there, when it says) and ``band`` (the range
around it that held 99 % of the held-out points), ``score``, ``detectors`` (each member's share of the
score, largest first), ``agreement`` (the fraction of members on the ensemble's side of the
threshold), ``version`` and a ``summary`` line: the newest alarm of the incident.

**Delivery** (:class:`AlertSender`): a tenant's alerts go only to that tenant's receivers
(``alerts.receivers``). Each receiver has a bounded queue (``max_queue``, oldest dropped and
counted) and a task that POSTs batches off the request path, retrying connection errors,
timeouts, 5xx and 429 with exponential backoff up to ``max_attempts`` (then dead-lettered and
counted: ``eyenet_alert_deliveries_total{outcome="dead_letter"}``); another 4xx is dead-lettered
at once. Scoring never waits for a delivery and never fails because of one.

**Webhooks** get ``{"version": "1", "tenant": ..., "alerts": [...]}`` (each alert as Alertmanager
gets it, plus ``status``), signed: ``X-EyeNet-Timestamp`` (unix seconds) and
``X-EyeNet-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + body>`` with the webhook's
secret (:func:`sign`; a receiver checks with :func:`verify`, which also refuses old timestamps).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from eyenet.monitoring import metrics as m
from eyenet.serving.settings import AlertSettings, WebhookSettings

log = logging.getLogger(__name__)
ALERTNAME = "EyeNetAnomaly"
SIGNATURE, TIMESTAMP = "X-EyeNet-Signature", "X-EyeNet-Timestamp"
#: alerts in one POST at most
MAX_BATCH = 500


def iso(t: float) -> str:
    """RFC 3339 in UTC, as Alertmanager's API takes it."""
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``X-EyeNet-Signature`` value of ``body`` sent at ``timestamp``."""
    return "sha256=" + hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, timestamp: str | None, signature: str | None, *,
           max_age_s: float = 300.0, now: float | None = None) -> bool:
    """Whether a webhook body is EyeNet's, unchanged and recent (what a receiver should check)."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > max_age_s:
        return False
    return hmac.compare_digest(sign(secret, body, int(timestamp)), signature)


# -- incidents ---------------------------------------------------------------------------------------
@dataclass
class Incident:
    labels: dict[str, str]
    starts_at: float
    annotations: dict[str, str] = field(default_factory=dict)
    calm: int = 0  # consecutive scored points below the threshold
    sent_at: float = 0.0  # when its firing alert was last queued (monotonic)

    def alert(self, ends_at: float | None = None) -> dict[str, Any]:
        out = {"labels": dict(self.labels), "annotations": dict(self.annotations), "startsAt": iso(self.starts_at)}
        if ends_at is not None:
            out["endsAt"] = iso(ends_at)
        return out


def _num(v: Any) -> str:
    return "" if v is None else f"{float(v):.6g}"


def _drivers(shares: dict[str, float | None]) -> str:
    """The members by their share of the score, largest first: ``seasonal 72 %, lstm 28 %``."""
    scored = sorted(((f, s) for f, s in shares.items() if s is not None and math.isfinite(s)), key=lambda fs: -fs[1])
    return ", ".join(f"{f} {100 * s:.0f} %" for f, s in scored)


def _band(band: list[float] | None) -> str:
    return "" if not band else f"{_num(band[0])} to {_num(band[1])}"


class Incidents:
    """Open incidents by series (one router replica's; at most ``max_incidents``, the oldest resolved
    beyond it). :meth:`observe` turns scored points into alert transitions, :meth:`due` the re-sends."""

    def __init__(self, settings: AlertSettings | None = None, clock: Any = time.monotonic) -> None:
        self.settings = settings or AlertSettings()
        self.clock = clock
        self.open: OrderedDict[tuple[str, str, str], Incident] = OrderedDict()  # (tenant, group, series) -> incident

    @staticmethod
    def _labels(tenant: str, group: str, series: str, labels: dict[str, str] | None, model: str,
                severity: str) -> dict[str, str]:
        base = {"series": series} if labels is None else \
            {k: v for k, v in labels.items() if k not in ("tenant", "group", "model", "severity")}
        return {**base, "alertname": ALERTNAME, "tenant": tenant, "group": group, "model": model, "severity": severity}

    def observe(self, tenant: str, group: str, series: str, labels: dict[str, str] | None, model: str,
                version: int, threshold: float, values: list[float | None], timestamps: list[float],
                points: list[dict[str, Any]], alarm_state: Any = None) -> list[tuple[str, dict[str, Any]]]:
        """The alert transitions (``(tenant, alert)``) of one series' newly scored points: ``values``
        and ``timestamps`` (unix seconds) aligned with the response ``points``. ``alarm_state`` (the
        series' new :class:`~eyenet.core.alarms.AlarmState`) carries the open incident with the
        series: read when this process does not know it (the series came from another replica),
        written back after."""
        s = self.settings
        key = (tenant, group, series)
        out: list[tuple[str, dict[str, Any]]] = []
        saved = getattr(alarm_state, "incident", None)
        if key not in self.open and saved:
            self.open[key] = Incident(self._labels(tenant, group, series, labels, model, saved["severity"]),
                                      starts_at=float(saved["start"]), annotations=dict(saved["annotations"]),
                                      calm=int(saved["calm"]))
        for value, ts, p in zip(values, timestamps, points):
            score = p.get("score")
            if p.get("imputed") or score is None:
                continue
            inc = self.open.get(key)
            if p.get("alarm"):
                severity = p.get("severity") or "warning"
                if inc is not None and inc.labels["severity"] == "warning" and severity == "critical":
                    out.append((tenant, inc.alert(ends_at=ts)))  # escalated: the warning alert ends here
                    m.ALERTS.labels("resolved").inc()
                    inc = None
                if inc is None:
                    inc = Incident(self._labels(tenant, group, series, labels, model, severity), starts_at=ts)
                    self.open[key] = inc
                    fresh = True
                else:
                    fresh = False
                inc.calm = 0
                inc.annotations = {
                    "value": _num(value), "expected": _num(p.get("expected")), "score": _num(score),
                    "band": _band(p.get("band")), "detectors": _drivers(p.get("shares") or {}),
                    "agreement": _num(p.get("agreement")), "version": str(version),
                    "summary": f"{series}: {_num(value)}, expected {_num(p.get('expected')) or 'n/a'} "
                               f"(score {score:.2f}, {severity})"}
                self.open.move_to_end(key)
                if fresh:
                    inc.sent_at = self.clock()
                    out.append((tenant, inc.alert()))
                    m.ALERTS.labels("firing").inc()
                    if len(self.open) > s.max_incidents:  # bounded: the least recently alarmed one ends
                        (t0, _, _), old = self.open.popitem(last=False)
                        out.append((t0, old.alert(ends_at=ts)))
                        m.ALERTS.labels("resolved").inc()
                        m.EVICTIONS.labels("incidents").inc()
            elif inc is not None:
                inc.calm = inc.calm + 1 if score < threshold else 0
                if inc.calm >= s.resolve_after:
                    del self.open[key]
                    out.append((tenant, inc.alert(ends_at=ts)))
                    m.ALERTS.labels("resolved").inc()
        if alarm_state is not None:
            inc = self.open.get(key)
            alarm_state.incident = None if inc is None else {
                "start": inc.starts_at, "severity": inc.labels["severity"], "calm": inc.calm,
                "annotations": inc.annotations}
        return out

    def forget(self, tenant: str, group: str, series: str) -> None:
        """The series went to another process (its incident went with its state): no re-sends here."""
        self.open.pop((tenant, group, series), None)

    def due(self) -> list[tuple[str, dict[str, Any]]]:
        """Firing alerts not queued for ``resend_s``: queued again (same labels and ``startsAt``)."""
        now, every = self.clock(), self.settings.resend_s
        out = []
        for (tenant, _, _), inc in self.open.items():
            if now - inc.sent_at >= every:
                inc.sent_at = now
                out.append((tenant, inc.alert()))
                m.ALERTS.labels("resent").inc()
        return out


# -- delivery ----------------------------------------------------------------------------------------
def _secret(hook: WebhookSettings) -> bytes:
    if hook.secret_env is not None:
        value = os.environ.get(hook.secret_env)
        if not value:
            raise ValueError(f"webhook {hook.url}: environment variable {hook.secret_env} is not set")
        return value.encode()
    path = Path(hook.secret_file or "")
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"webhook {hook.url}: cannot read its secret file {path} ({exc.strerror})") from None
    if not value:
        raise ValueError(f"webhook {hook.url}: its secret file {path} is empty")
    return value.encode()


class _Receiver:
    """One receiver's bounded queue and its delivery task."""

    def __init__(self, kind: str, url: str, tenant: str, settings: AlertSettings,
                 hook: WebhookSettings | None = None) -> None:
        self.kind, self.url, self.tenant, self.settings, self.hook = kind, url, tenant, settings, hook
        self.endpoint = url.rstrip("/") + "/api/v2/alerts" if kind == "alertmanager" else url
        self.queue: deque[dict[str, Any]] = deque()
        self.wake = asyncio.Event()
        self.sent = self.dead = self.dropped = self.retries = 0
        self.error: str | None = None

    def add(self, alert: dict[str, Any]) -> None:
        if len(self.queue) >= self.settings.max_queue:
            self.queue.popleft()
            self.dropped += 1
            m.ALERT_DELIVERIES.labels(self.kind, "dropped").inc()
        self.queue.append(alert)
        self.wake.set()

    def _body(self, batch: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
        headers = {"Content-Type": "application/json"}
        if self.kind == "alertmanager":
            return json.dumps(batch).encode(), headers
        alerts = [{**a, "status": "resolved" if "endsAt" in a else "firing"} for a in batch]  # firing: no end yet
        body = json.dumps({"version": "1", "tenant": self.tenant, "alerts": alerts}).encode()
        ts = int(time.time())
        # read at every delivery: a secret rotated (or mounted late) is used from the next one on
        headers.update({TIMESTAMP: str(ts), SIGNATURE: sign(_secret(self.hook), body, ts)})
        return body, headers

    def _post(self, body: bytes, headers: dict[str, str]) -> int:
        req = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as r:  # noqa: S310 - configured URL
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    async def run(self) -> None:
        s = self.settings
        while True:
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
            batch = [self.queue.popleft() for _ in range(min(MAX_BATCH, len(self.queue)))]
            for attempt in range(1, s.max_attempts + 1):
                try:
                    body, headers = self._body(batch)
                    status = await asyncio.to_thread(self._post, body, headers)
                except ValueError as exc:  # no signing secret (yet): never sent unsigned
                    status, self.error = None, str(exc)
                except OSError as exc:  # unreachable, refused, timed out
                    status, self.error = None, f"{type(exc).__name__}: {exc}"
                if status is not None and 200 <= status < 300:
                    self.sent += len(batch)
                    self.error = None
                    m.ALERT_DELIVERIES.labels(self.kind, "sent").inc(len(batch))
                    break
                if status is not None:
                    self.error = f"HTTP {status} from {self.endpoint}"
                refused = status is not None and status != 429 and status < 500  # the receiver will never take it
                if refused or attempt >= s.max_attempts:
                    self.dead += len(batch)
                    m.ALERT_DELIVERIES.labels(self.kind, "dead_letter").inc(len(batch))
                    log.warning("alerts to %s dead-lettered (%d): %s", self.endpoint, len(batch), self.error)
                    break
                self.retries += 1
                m.ALERT_DELIVERIES.labels(self.kind, "retried").inc()
                await asyncio.sleep(min(s.max_backoff_s, 0.1 * 2 ** attempt))

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.endpoint, "queued": len(self.queue), "sent": self.sent,
                "dead_letter": self.dead, "dropped": self.dropped, "retries": self.retries, "error": self.error}


class AlertSender:
    """The receivers of every tenant in ``settings.receivers`` and their delivery tasks. A webhook's
    secret is read at each delivery; while it cannot be (an unset variable, a missing file) its
    deliveries fail as an unreachable receiver's do (retried, then dead-lettered, the error naming
    the webhook and where its secret should be, never the secret), and the replica keeps serving."""

    def __init__(self, settings: AlertSettings) -> None:
        self.settings = settings
        self.receivers: dict[str, list[_Receiver]] = {
            tenant: [_Receiver("alertmanager", url, tenant, settings) for url in r.alertmanager]
            + [_Receiver("webhook", h.url, tenant, settings, h) for h in r.webhooks]
            for tenant, r in settings.receivers.items()}
        for rs in self.receivers.values():
            for r in rs:
                if r.hook is not None:
                    try:
                        _secret(r.hook)
                    except ValueError as exc:
                        r.error = str(exc)
                        log.warning("alerts: %s (its alerts wait until it can be read)", exc)
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        if self._tasks and not any(t.done() for t in self._tasks):
            return
        for t in self._tasks:
            t.cancel()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(r.run()) for rs in self.receivers.values() for r in rs]

    def send(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Queue alerts (``(tenant, alert)``) for their tenant's receivers; no I/O here."""
        for tenant, alert in items:
            for r in self.receivers.get(tenant, ()):
                r.add(alert)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._tasks = []

    def stats(self) -> list[dict[str, Any]]:
        return [{"tenant": t, **r.stats()} for t, rs in self.receivers.items() for r in rs]
