"""Alarms out (eyenet.serving.alerts): incidents per series, signing, and delivery to a real
Alertmanager (Debian's prometheus-alertmanager) and to a signed webhook run by the test. No Ray."""
from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

import pytest
import requests

from eyenet.serving.alerts import ALERTNAME, AlertSender, Incidents, sign, verify
from eyenet.serving.settings import AlertSettings
from servers import ALERTMANAGER_MISSING, AlertmanagerServer, WebhookSink

T0 = 1_790_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def point(score: float | None, alarm: bool = False, expected: float | None = 40.0) -> dict[str, Any]:
    severity = None if score is None else "normal" if not alarm else "critical" if score >= 0.95 else "warning"
    return {"score": score, "alarm": alarm, "severity": severity, "expected": expected, "band": [35.0, 45.0],
            "detectors": {"seasonal": 0.9, "lstm": 0.3}, "shares": {"seasonal": 0.75, "lstm": 0.25},
            "agreement": 0.5}


def observe(inc: Incidents, scores: list[tuple[float, bool]], start: int = 0, series: str = "cpu") -> list:
    pts = [point(s, a) for s, a in scores]
    return inc.observe("acme", "web", series, None, "acme.web.ensemble", 3, 0.7, [50.0] * len(pts),
                       [T0 + start + i for i in range(len(pts))], pts)


def test_an_incident_fires_once_and_resolves_after_calm_points():
    inc = Incidents(AlertSettings(resolve_after=3))
    out = observe(inc, [(0.1, False), (0.8, True), (0.9, True), (0.85, False)])
    assert len(out) == 1  # two alarms (and a high score between): one alert
    tenant, alert = out[0]
    assert tenant == "acme" and "endsAt" not in alert
    assert alert["labels"] == {"series": "cpu", "alertname": ALERTNAME, "tenant": "acme", "group": "web",
                               "model": "acme.web.ensemble", "severity": "warning"}
    assert alert["startsAt"].startswith("2026-09-21T") and alert["startsAt"].endswith("Z")
    a = alert["annotations"]
    assert a["score"] == "0.8" and a["value"] == "50" and a["expected"] == "40" and a["version"] == "3"
    assert a["detectors"] == "seasonal 75 %, lstm 25 %" and a["band"] == "35 to 45" and a["agreement"] == "0.5"
    assert observe(inc, [(0.2, False), (0.75, False), (0.1, False), (0.2, False)], start=4) == []  # calm reset by 0.75
    (_, resolved), = observe(inc, [(0.1, False)], start=8)
    assert resolved["labels"] == alert["labels"] and resolved["startsAt"] == alert["startsAt"] and "endsAt" in resolved
    assert inc.open == {}


def test_an_incident_escalates_to_critical_and_is_resent_while_it_lasts():
    clock = Clock()
    inc = Incidents(AlertSettings(resend_s=60), clock=clock)
    observe(inc, [(0.8, True)])
    warn_end, crit = observe(inc, [(0.99, True)], start=1)
    assert warn_end[1]["labels"]["severity"] == "warning" and "endsAt" in warn_end[1]
    assert crit[1]["labels"]["severity"] == "critical" and "endsAt" not in crit[1]
    assert observe(inc, [(0.8, True)], start=2) == []  # never back down within the incident
    assert inc.due() == []
    clock.t += 61
    (_, again), = inc.due()
    assert again["labels"] == crit[1]["labels"] and again["startsAt"] == crit[1]["startsAt"]


def test_imputed_and_unready_points_neither_open_nor_close_incidents():
    inc = Incidents(AlertSettings(resolve_after=1))
    assert observe(inc, [(0.8, True)])
    pts = [{**point(None), "imputed": True}, point(None)]
    assert inc.observe("acme", "web", "cpu", None, "m", 1, 0.7, [None, 1.0], [T0 + 5, T0 + 6], pts) == []
    assert inc.open


def test_open_incidents_are_bounded():
    inc = Incidents(AlertSettings(max_incidents=2))
    for k in range(3):
        observe(inc, [(0.8, True)], series=f"s{k}")
    assert [key[2] for key in inc.open] == ["s1", "s2"]


def test_a_signature_verifies_and_a_changed_or_old_body_does_not():
    body, secret = b'{"alerts": []}', b"s3cret"
    ts = int(time.time())
    sig = sign(secret, body, ts)
    assert verify(secret, body, str(ts), sig)
    assert not verify(secret, body + b" ", str(ts), sig)
    assert not verify(b"other", body, str(ts), sig)
    assert not verify(secret, body, str(ts - 3600), sign(secret, body, ts - 3600))  # replayed later
    assert not verify(secret, body, None, sig) and not verify(secret, body, "x", sig)


def test_a_webhook_needs_its_secret_and_never_shows_it(tmp_path, monkeypatch):
    monkeypatch.delenv("EYENET_TEST_HOOK", raising=False)
    hooks = {"receivers": {"acme": {"webhooks": [{"url": "http://127.0.0.1:9/hook", "secret_env": "EYENET_TEST_HOOK"}]}}}
    missing = AlertSender(AlertSettings(**hooks))  # the replica still starts; the receiver says what is wrong
    assert "EYENET_TEST_HOOK is not set" in missing.stats()[0]["error"]
    with pytest.raises(ValueError, match="exactly one of secret_env and secret_file"):
        AlertSettings(receivers={"acme": {"webhooks": [{"url": "http://x"}]}})
    monkeypatch.setenv("EYENET_TEST_HOOK", "hunter2")
    sender = AlertSender(AlertSettings(**hooks))
    assert "hunter2" not in str(sender.stats())


# -- delivery, against real receivers ------------------------------------------------------------------
@pytest.fixture
def alertmanager():
    if shutil.which("prometheus-alertmanager") is None and shutil.which("alertmanager") is None:
        pytest.skip(ALERTMANAGER_MISSING)
    sink = WebhookSink()
    server = AlertmanagerServer(sink.url).start()
    yield server, sink
    server.cleanup()
    sink.close()


def _deliver(sender: AlertSender, items: list, until: Any, what: str, timeout: float = 30) -> None:
    async def go():
        sender.start()
        sender.send(items)
        t0 = time.monotonic()
        while not until():
            assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}: {sender.stats()}"
            await asyncio.sleep(0.1)
        await sender.close()

    asyncio.run(go())


def _retried_then_delivered(sender: AlertSender, settings: AlertSettings, sink: WebhookSink,
                            unblock: Any) -> None:
    """One alarm sent while the receiver cannot take it: wait until it was retried twice, call
    ``unblock()`` (in a thread), then wait until the receiver's sink got it and the sender saw the
    answer (closing the sender sooner would cancel the delivery between the two)."""
    async def go():
        sender.start()
        sender.send(observe(Incidents(settings), [(0.8, True)]))
        t0 = time.monotonic()
        while sender.receivers["acme"][0].retries < 2:
            assert time.monotonic() - t0 < 20, sender.stats()
            await asyncio.sleep(0.05)
        await asyncio.to_thread(unblock)
        while not sink.received or not any(s["sent"] for s in sender.stats()):
            assert time.monotonic() - t0 < 60, sender.stats()
            await asyncio.sleep(0.05)
        await sender.close()

    asyncio.run(go())


def test_an_incident_reaches_alertmanager_once_and_resolves(alertmanager):
    server, sink = alertmanager
    settings = AlertSettings(resolve_after=2, receivers={"acme": {"alertmanager": [server.url]},
                                                         "other": {"alertmanager": ["http://127.0.0.1:9"]}})
    sender = AlertSender(settings)
    inc = Incidents(settings)
    # other tenants' alerts never go to acme's Alertmanager
    firing = observe(inc, [(0.8, True), (0.9, True)]) + [("other", {"labels": {"alertname": "X"}, "annotations": {},
                                                                     "startsAt": "2026-09-21T00:00:00Z"})]
    _deliver(sender, firing, lambda: any(a["status"] == "firing" for n in sink.received for a in n["alerts"]),
             "the firing notification")
    held = server.alerts()
    assert len(held) == 1 and held[0]["labels"]["series"] == "cpu" and held[0]["status"]["state"] == "active"
    assert held[0]["annotations"]["detectors"].startswith("seasonal")
    _deliver(sender, observe(inc, [(0.1, False), (0.1, False)], start=2),
             lambda: any(a["status"] == "resolved" for n in sink.received for a in n["alerts"]), "the resolution")
    notes = [a for n in sink.received for a in n["alerts"]]
    assert [a["status"] for a in notes] == ["firing", "resolved"]
    assert all(a["labels"]["alertname"] == ALERTNAME for a in notes)


def test_alerts_wait_for_a_stopped_alertmanager_and_arrive_once_it_is_back(alertmanager):
    server, sink = alertmanager
    settings = AlertSettings(max_backoff_s=0.5, receivers={"acme": {"alertmanager": [server.url]}})
    sender = AlertSender(settings)
    server.stop()

    _retried_then_delivered(sender, settings, sink, lambda: server.start())
    (stats,) = sender.stats()
    assert stats["sent"] == 1 and stats["dead_letter"] == 0 and stats["retries"] >= 2
    assert len(server.alerts()) == 1


def test_a_signed_webhook_is_verified_and_a_tampered_one_refused(monkeypatch):
    secret = "webhook-secret"
    monkeypatch.setenv("EYENET_TEST_HOOK", secret)
    sink = WebhookSink(secret=secret.encode())
    try:
        settings = AlertSettings(receivers={"acme": {"webhooks": [{"url": sink.url, "secret_env": "EYENET_TEST_HOOK"}]}})
        sender = AlertSender(settings)
        _deliver(sender, observe(Incidents(settings), [(0.8, True)]), lambda: sink.received, "the webhook")
        (body,) = sink.received
        assert body["tenant"] == "acme" and body["alerts"][0]["status"] == "firing"
        assert body["alerts"][0]["labels"]["series"] == "cpu"
        # the same body with one byte changed, under the original signature: refused
        ts = int(time.time())
        raw = b'{"version": "1", "tenant": "acme", "alerts": []}'
        headers = {"X-EyeNet-Timestamp": str(ts), "X-EyeNet-Signature": sign(secret.encode(), raw, ts)}
        assert requests.post(sink.url, data=raw, headers=headers, timeout=10).status_code == 200
        assert requests.post(sink.url, data=raw.replace(b"acme", b"acmf"), headers=headers, timeout=10).status_code == 401
        assert len(sink.refused) == 1
    finally:
        sink.close()


def test_a_receiver_that_refuses_for_good_dead_letters_without_retrying():
    sink = WebhookSink(secret=b"not-what-eyenet-signs-with")  # answers 401 to everything EyeNet sends
    try:
        import os

        os.environ["EYENET_TEST_HOOK2"] = "another"
        settings = AlertSettings(receivers={"acme": {"webhooks": [{"url": sink.url, "secret_env": "EYENET_TEST_HOOK2"}]}})
        sender = AlertSender(settings)
        _deliver(sender, observe(Incidents(settings), [(0.8, True)]),
                 lambda: sender.receivers["acme"][0].dead == 1, "the dead letter")
        (stats,) = sender.stats()
        assert stats["retries"] == 0 and stats["sent"] == 0 and "HTTP 401" in stats["error"]
    finally:
        os.environ.pop("EYENET_TEST_HOOK2", None)
        sink.close()


def test_the_pipeline_turns_a_streamed_spike_into_one_alert_that_resolves(tmp_path):
    import numpy as np

    from eyenet.core import presets, synthetic
    from eyenet.core.alarms import AlarmPolicy
    from eyenet.core.model import AnomalyModel
    from eyenet.serving import schemas
    from eyenet.serving.settings import AppConfig
    from eyenet.serving.streams import StreamStore
    from fakes import pipeline

    _, v, _ = synthetic.series("cpu_pct", n=900, seed=2, anomalies_per_metric=0)
    v = np.asarray(v, float)
    model = AnomalyModel.from_dict(presets.model_config("zscore")).fit(v[:600])
    model.alarm = AlarmPolicy(threshold=0.5)  # a 40-sigma spike ranks 0.63 against this one-member model's history
    config = AppConfig(alerts={"resolve_after": 3, "receivers": {"default": {"alertmanager": ["http://127.0.0.1:9"]}}})
    p = pipeline(model, StreamStore(str(tmp_path)), config)
    sent: list = []
    p.alerts_out = sent.extend
    spike = float(v[600:700].mean() + 40 * v[600:700].std())

    async def go():
        await p.stream(schemas.StreamRequest(id="cpu", values=v[600:700].tolist()))
        quiet = list(sent)
        body, _ = await p.stream(schemas.StreamRequest(id="cpu", values=[spike, spike]))
        await p.stream(schemas.StreamRequest(id="cpu", values=v[700:720].tolist()))
        return quiet, body

    quiet, body = asyncio.run(go())
    assert quiet == [] and body["points"][0]["alarm"]
    assert [("endsAt" in a) for _, a in sent] == [False, True]  # one firing alert, then its resolution
    (tenant, firing), (_, resolved) = sent
    assert tenant == "default" and firing["labels"]["series"] == "cpu" and firing["labels"]["model"] == "default.default.ensemble"
    assert float(firing["annotations"]["value"]) == pytest.approx(spike, rel=1e-5)
    assert resolved["labels"] == firing["labels"]


def test_an_open_incident_moves_with_its_series_to_another_replica(tmp_path):
    import numpy as np

    from eyenet.core import presets, synthetic
    from eyenet.core.alarms import AlarmPolicy
    from eyenet.core.model import AnomalyModel
    from eyenet.serving import schemas
    from eyenet.serving.settings import AppConfig
    from eyenet.serving.streams import StreamStore
    from fakes import pipeline

    _, v, _ = synthetic.series("cpu_pct", n=900, seed=2, anomalies_per_metric=0)
    v = np.asarray(v, float)
    model = AnomalyModel.from_dict(presets.model_config("zscore")).fit(v[:600])
    model.alarm = AlarmPolicy(threshold=0.5)
    config = AppConfig(alerts={"resolve_after": 3, "receivers": {"default": {"alertmanager": ["http://127.0.0.1:9"]}}})
    store = StreamStore(str(tmp_path))
    a, b = pipeline(model, store, config), pipeline(model, store, config)
    sent_a: list = []
    sent_b: list = []
    a.alerts_out, b.alerts_out = sent_a.extend, sent_b.extend
    spike = float(v[600:700].mean() + 40 * v[600:700].std())

    async def go():
        await a.stream(schemas.StreamRequest(id="cpu", values=[*v[600:700].tolist(), spike]))
        await b.stream(schemas.StreamRequest(id="cpu", values=v[700:720].tolist()))  # a hands the series to b

    asyncio.run(go())
    (_, firing), = sent_a
    (_, resolved), = sent_b  # b knew of the incident from the series' state, and resolved it
    assert resolved["labels"] == firing["labels"] and resolved["startsAt"] == firing["startsAt"]
    assert a.incidents.open == {} and b.incidents.open == {}  # nobody resends it


def test_a_webhook_without_its_secret_yet_sends_nothing_unsigned_and_delivers_once_it_is_there(monkeypatch):
    monkeypatch.delenv("EYENET_TEST_HOOK3", raising=False)
    secret = "late-secret"
    sink = WebhookSink(secret=secret.encode())
    try:
        settings = AlertSettings(max_backoff_s=0.2, max_attempts=50,
                                 receivers={"acme": {"webhooks": [{"url": sink.url, "secret_env": "EYENET_TEST_HOOK3"}]}})
        sender = AlertSender(settings)

        def unblock() -> None:
            assert sink.received == [] and sink.refused == []  # nothing went out unsigned
            monkeypatch.setenv("EYENET_TEST_HOOK3", secret)

        _retried_then_delivered(sender, settings, sink, unblock)
        (stats,) = sender.stats()
        assert stats["sent"] == 1 and stats["error"] is None and secret not in str(stats)
    finally:
        sink.close()
