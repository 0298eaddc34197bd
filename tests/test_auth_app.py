"""Authentication, roles and tenants on a real Serve app: a role x route matrix, cross-tenant
isolation, revoked keys, the handle API's identity, and the audit log's actor."""
from __future__ import annotations

import json
import time

import pytest
import requests

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROLES = ("reader", "writer", "operator", "admin")


def _call(app, method: str, path: str, key: str | None, body: dict | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {app['keys'][key]}"} if key else {}
    return requests.request(method, app["url"] + path, json=body, headers=headers, timeout=120)


def _routes(app) -> list[tuple[str, str, dict | None, str]]:
    """(method, path, body, least role) of every route, with bodies valid for tenant acme."""
    model = app["models"]["acme"]
    window = [float(v) for v in app["values"][:300]]
    return [
        ("GET", "/v1/models", None, "reader"),
        ("GET", "/v1/detectors", None, "reader"),
        ("GET", "/v1/controller", None, "reader"),
        ("GET", f"/v1/models/{model}/history", None, "reader"),
        ("GET", "/metrics", None, "reader"),
        ("GET", "/v1/me", None, "reader"),
        ("GET", "/v1/series?match=m-", None, "reader"),
        ("POST", "/v1/detect", {"series": [{"id": "m-1", "values": window}], "group": "web"}, "writer"),
        ("POST", "/v1/stream", {"id": "m-2", "values": window, "group": "web"}, "writer"),
        ("POST", "/v1/stream/batch", {"series": [{"id": "m-3", "values": window}], "group": "web"}, "writer"),
        ("POST", "/v1/models/{model}/review".format(model=model), {}, "operator"),
    ]


def test_healthz_is_open_and_says_auth_is_on(secured_app) -> None:
    r = _call(secured_app, "GET", "/healthz", None)
    assert r.status_code == 200 and r.json()["auth"] == "on"


def test_every_route_needs_a_credential_and_the_right_role(secured_app) -> None:
    seen = []
    for method, path, body, least in _routes(secured_app):
        r = _call(secured_app, method, path, None, body)
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer") and "credential" in r.json()["error"]
        for role in ROLES:
            r = _call(secured_app, method, path, role, body)
            if ROLES.index(role) < ROLES.index(least):
                assert r.status_code == 403, (method, path, role, r.text)
                assert f"needs {least}" in r.json()["error"]
            elif path.endswith("/review") and role != least:
                # the least role's review already dealt with the challenger: past auth, the model's state answers
                assert r.status_code == 409 and "challenger" in r.json()["error"], (method, path, role, r.text)
            else:
                assert r.status_code < 300, (method, path, role, r.status_code, r.text)
            seen.append((path, role, r.status_code))
    assert len(seen) == 4 * len(_routes(secured_app))


def test_a_wrong_or_revoked_key_is_refused(secured_app) -> None:
    r = requests.get(secured_app["url"] + "/v1/models", headers={"Authorization": "Bearer eyn_000000000000_" + "x" * 43},
                     timeout=30)
    assert r.status_code == 401
    rec, key = secured_app["store"].create("short-lived", "acme", "reader")
    ok = requests.get(secured_app["url"] + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert ok.status_code == 200
    secured_app["store"].revoke(rec.id)
    deadline = time.time() + 30  # refused everywhere once the replicas' caches (cache_s = 1 s) expire
    while time.time() < deadline:
        r = requests.get(secured_app["url"] + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        if r.status_code == 401:
            break
        time.sleep(0.5)
    assert r.status_code == 401 and "revoked" in r.json()["error"]


def test_a_tenant_sees_and_changes_only_its_own(secured_app) -> None:
    acme, globex = secured_app["models"]["acme"], secured_app["models"]["globex"]
    names = {m["name"] for m in _call(secured_app, "GET", "/v1/models", "globex-writer").json()["models"]}
    assert globex in names and acme not in names
    assert set(_call(secured_app, "GET", "/v1/controller", "globex-writer").json()["table"]) <= {globex}
    assert acme in {m["name"] for m in _call(secured_app, "GET", "/v1/models", "admin").json()["models"]}
    for method, path, body in [
        ("GET", f"/v1/models/{acme}/history", None),
        ("POST", f"/v1/models/{acme}/rollback", {}),
        ("POST", f"/v1/models/{acme}/promote", {"force": True}),
        ("POST", f"/v1/models/{acme}/review", {}),
        ("POST", "/v1/detect", {"series": [{"id": "x", "values": [1.0, 2.0]}], "tenant": "acme", "group": "web"}),
        ("POST", "/v1/stream", {"id": "x", "values": [1.0], "tenant": "acme", "group": "web"}),
        ("POST", "/v1/stream/batch", {"series": [{"id": "x", "values": [1.0]}], "tenant": "acme", "group": "web"}),
        ("POST", "/v1/feedback", {"id": "x", "label": "false_alarm", "indices": [0], "tenant": "acme", "group": "web"}),
        ("GET", "/v1/series/m-2/points?tenant=acme&group=web", None),
    ]:
        key = "globex-operator" if "/models/" in path else "globex-writer"
        r = _call(secured_app, method, path, key, body)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        assert "tenant" in r.json()["error"]
    assert all(s["tenant"] == "globex" for s in _call(secured_app, "GET", "/v1/series", "globex-writer").json()["series"])
    me = _call(secured_app, "GET", "/v1/me", "globex-writer").json()
    assert me["tenant"] == "globex" and me["role"] == "writer" and me["roles"] == ["reader", "writer"]
    metrics = _call(secured_app, "GET", "/metrics", "globex-writer").text
    assert f'model="{acme}"' not in metrics


def test_streams_are_kept_per_tenant(secured_app) -> None:
    window = [float(v) for v in secured_app["values"][:300]]
    a = _call(secured_app, "POST", "/v1/stream", "writer", {"id": "shared-id", "values": window, "group": "web"})
    g = _call(secured_app, "POST", "/v1/stream", "globex-writer", {"id": "shared-id", "values": window[:10],
                                                                      "group": "web"})
    assert a.status_code == 200 and g.status_code == 200
    assert a.json()["seen"] == 300 and g.json()["seen"] == 10  # same id, two tenants, two streams
    assert g.json()["model"] == secured_app["models"]["globex"]


def test_operator_actions_are_audited_with_the_credential_identity(secured_app) -> None:
    model = secured_app["models"]["acme"]
    r = _call(secured_app, "POST", f"/v1/models/{model}/promote", "operator", {"version": 2, "force": True,
                                                                               "reason": "drill"})
    assert r.status_code == 200, r.text
    r = _call(secured_app, "POST", f"/v1/models/{model}/rollback", "operator", {"to": 1, "reason": "drill over"})
    assert r.status_code == 200, r.text
    events = [json.loads(line) for line in secured_app["audit"].read_text().splitlines()]
    mine = [(e["event"], e["actor"]) for e in events if e["name"] == model]
    assert ("PROMOTE", "key:operator") in mine and ("ROLLBACK", "key:operator") in mine
    kinds = [e for e, _ in mine]
    assert kinds.index("INTENT") < kinds.index("PROMOTE")  # the intent is written before the alias moves
    history = _call(secured_app, "GET", f"/v1/models/{model}/history", "reader").json()["events"]
    last = [e for e in history if e["event"] == "ROLLBACK"][-1]
    assert last["actor"] == "key:operator" and last["reason"] == "drill over"


def test_the_handle_api_needs_an_identity_and_applies_it(secured_app) -> None:
    from ray import serve

    from eyenet.core.errors import AuthenticationError, PermissionDeniedError
    from eyenet.serving import schemas
    from eyenet.serving.auth import Identity

    handle = serve.get_app_handle("eyenet")
    req = schemas.DetectRequest(series=[schemas.SeriesIn(id="job-1", values=[float(v) for v in
                                                                             secured_app["values"][:50]])],
                                group="web")
    with pytest.raises(AuthenticationError, match="identity"):  # Ray re-raises the replica's error type
        handle.detect.remote(req).result(timeout_s=60)
    job = Identity("job:nightly", "globex", "writer")
    out = handle.detect.remote(req, identity=job).result(timeout_s=60)
    assert out["results"][0]["model"] == secured_app["models"]["globex"]
    with pytest.raises(PermissionDeniedError, match="tenant"):
        handle.detect.remote(req.model_copy(update={"tenant": "acme"}), identity=job).result(timeout_s=60)


# -- a fault on the same app: the stream database stops taking writes ---------------------------------------
def _health(app) -> dict:
    return requests.get(app["url"] + "/healthz", timeout=30).json()


def _wait_health(app, ok: bool, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        h = _health(app)
        if (h["store"] is not None and h["store"]["ok"] == ok and h["store"]["dirty"] == 0) if ok \
                else (h["status"] == "degraded" and any("stream store" in p for p in h["problems"])):
            return h
        assert time.monotonic() < deadline, f"/healthz never became {'ok' if ok else 'degraded'}: {h}"
        time.sleep(0.2)


def test_an_unwritable_stream_database_degrades_health_and_loses_no_acknowledged_point(secured_app) -> None:
    """The snapshot file turns unwritable mid-run (as root chmod stops nothing, so a directory takes
    the database's place): streaming goes on, /healthz says degraded with the reason, and once the
    file is back every acknowledged point is in it."""
    import shutil

    from eyenet.serving.streams import Streams

    values = [float(v) for v in secured_app["values"]]
    sent = {"fault-a": 0, "fault-b": 0}

    def stream(sid: str, chunk: list[float]) -> None:
        r = _call(secured_app, "POST", "/v1/stream", "writer", {"id": sid, "values": chunk, "group": "web"})
        assert r.status_code == 200, r.text
        sent[sid] += len(chunk)
        assert r.json()["seen"] == sent[sid]

    stream("fault-a", values[:200])
    _wait_health(secured_app, ok=True)
    state = secured_app["state"]
    db = state / "streams.db"
    aside = state.parent / "state-aside"
    aside.mkdir()
    for f in state.glob("streams.db*"):
        shutil.move(str(f), aside / f.name)
    db.mkdir()  # every write now fails: "unable to open database file"
    try:
        for i in range(5):  # acknowledged while the database refuses them
            stream("fault-a", values[200 + 10 * i:210 + 10 * i])
            stream("fault-b", values[10 * i:10 * i + 10])
        broken = _wait_health(secured_app, ok=False)
        assert broken["store"]["ok"] is False and broken["store"]["dirty"] >= 1 and broken["store"]["failures"] >= 1
        assert broken["streams"] is not None  # still serving
        stream("fault-a", values[250:260])
    finally:
        db.rmdir()
        for f in aside.iterdir():
            shutil.move(str(f), state / f.name)
        aside.rmdir()
    healed = _wait_health(secured_app, ok=True)
    assert healed["store"]["error"] is None
    snap = Streams(state)  # what a restarted store would load
    for sid, n in sent.items():
        assert snap.get(f"acme/web/{sid}")[1].seen == n, sid
