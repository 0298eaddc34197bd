"""The served system on a real Ray Serve instance: HTTP and handle APIs, stream state, bad input, degradation."""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import requests

from eyenet.core import presets, synthetic
from eyenet.serving import schemas
from eyenet.lifecycle import training

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MEMBERS = [{"family": "zscore", "params": {}}, {"family": "mad", "params": {}},
           {"family": "cnn", "params": {"max_epochs": 3}}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def values():
    _, v, _ = synthetic.series("cpu_pct", n=1500, seed=1)
    return np.asarray(v)


@pytest.fixture(scope="module")
def served(ray_cluster, mlflow_store, values, tmp_path_factory):
    from ray import serve

    from eyenet.serve.app import build_app

    trained = training.train_and_register(presets.model_config("ensemble", {"members": MEMBERS}), values[:600],
                                          registry=mlflow_store, group="served")
    mlflow_store.set_alias(trained.version.name, "champion", trained.version.version)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = {"auth": {"enabled": False}, "families": ["zscore", "mad", "cnn"], "mlflow_uri": mlflow_store.uri,
              "state_uri": str(tmp_path_factory.mktemp("state")), "member_timeout_s": 10, "use_gpus": False}
    serve.run(build_app(config), name="eyenet", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    yield {"url": url, "model": trained.model, "version": trained.version}
    serve.delete("eyenet")
    serve.shutdown()
    import ray

    from eyenet.serve.actors import STORE_NAME, find_actor, find_controller, find_monitor, flush_store
    from eyenet.serve.jobs import jobs_name

    flush_store()
    # detached: they outlive the app unless stopped, and the next module's app would find this one's
    # (a stream store still writing to this module's folder)
    for actor in (find_controller("eyenet"), find_monitor("eyenet"), find_actor(STORE_NAME),
                  find_actor(jobs_name("eyenet"))):
        if actor is not None:
            ray.kill(actor, no_restart=True)


def _detect(url, values, **extra):
    body = {"series": [{"id": "web-1", "values": [float(x) for x in values]}], "group": "served", **extra}
    return requests.post(f"{url}/v1/detect", json=body, timeout=60)


def _scores(points):
    return np.array([np.nan if p["score"] is None else p["score"] for p in points])


def test_detect_over_http_matches_offline_scoring(served, values):
    resp = _detect(served["url"], values[:400])
    assert resp.status_code == 200, resp.text
    (res,) = resp.json()["results"]
    assert res["model"] == "default.served.ensemble" and res["version"] == served["version"].version
    assert res["degraded"] is False and res["missing"] == []
    assert len(res["points"]) == 400
    assert set(res["points"][-1]["detectors"]) == {"zscore", "mad", "cnn"}
    offline = served["model"].score(values[:400])
    np.testing.assert_allclose(_scores(res["points"]), offline.score, rtol=1e-12, equal_nan=True)
    assert [p["alarm"] for p in res["points"]] == offline.alarm.tolist()
    assert not res["points"][0]["ready"] and res["points"][-1]["ready"]


def test_handle_api_gives_the_same_scores(served, values):
    from ray import serve

    handle = serve.get_app_handle("eyenet")
    req = schemas.DetectRequest(series=[schemas.SeriesIn(id="web-1", values=values[:400].tolist())], group="served")
    out = handle.detect.remote(req).result(timeout_s=60)
    np.testing.assert_allclose(_scores(out["results"][0]["points"]), served["model"].score(values[:400]).score,
                               rtol=1e-12, equal_nan=True)


def test_stream_keeps_history_between_requests(served, values):
    url = served["url"]
    got = []
    for start in range(0, 450, 150):
        body = {"id": "stream-a", "values": values[start:start + 150].tolist(), "group": "served", "reset": start == 0}
        resp = requests.post(f"{url}/v1/stream", json=body, timeout=60)
        assert resp.status_code == 200, resp.text
        assert resp.json()["seen"] == start + 150
        got.extend(resp.json()["points"])
    np.testing.assert_allclose(_scores(got), served["model"].score(values[:450]).score, rtol=1e-12, equal_nan=True)


def test_stream_state_survives_a_router_replica_kill(served, values):
    import ray

    url = served["url"]
    body = {"id": "stream-kill", "values": values[:200].tolist(), "group": "served", "reset": True}
    assert requests.post(f"{url}/v1/stream", json=body, timeout=60).status_code == 200
    replica = requests.get(f"{url}/healthz", timeout=30).json()["replica"]
    ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=False)
    deadline = time.time() + 120
    while True:
        body = {"id": "stream-kill", "values": values[200:300].tolist(), "group": "served"}
        try:
            resp = requests.post(f"{url}/v1/stream", json=body, timeout=30)
            if resp.status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.time() < deadline, "router did not come back"
        time.sleep(1)
    assert resp.json()["seen"] == 300
    # the ingress may still pick the dead replica until its health check notices (requests in
    # flight to a killed replica fail; clients retry them)
    answered: list[str] = []
    while time.time() < deadline and len(answered) < 6:
        try:
            answered.append(requests.get(f"{url}/healthz", timeout=30).json()["replica"])
        except requests.ConnectionError:
            time.sleep(0.5)
    assert answered and replica not in answered
    want = served["model"].score(values[:300]).score[200:]
    np.testing.assert_allclose(_scores(resp.json()["points"]), want, rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b'{"series": [{"id": "a", "values": [1.0, -Infinity]}], "group": "served"}', 422, "series[0].values[1]: not a finite number"),
        (b'{"series": [{"id": "a", "values": [1.0, Infinity]}], "group": "served"}', 422, "not a finite number"),
        (b'{"series": [{"id": "a", "values": "x"}]}', 422, "series[0].values"),
        (b'{"series": []}', 422, "series"),
        (b'{"series": [{"id": "a", "values": [1, 2]}], "colour": "red"}', 422, "colour"),
        (b'{"series": [{"id": "a", "values": [1, 2], "timestamps": [2, 1]}], "group": "served"}', 422, "unsorted"),
        (b'{"series": [{"id": "a", "values": [1, 2], "timestamps": [1, 1]}], "group": "served"}', 422, "duplicate timestamp"),
        (b'{"series": [{"id": "a", "values": [1, 2], "timestamps": [1]}], "group": "served"}', 422, "1 timestamps for 2 values"),
        (b'{"series": [{"id": "a", "values": [1, 2]}], "group": "nobody"}', 404, "default.nobody.ensemble"),
        (b'{"series": [{"id": "a", "values": [1]}, {"id": "a", "values": [2]}], "group": "served"}', 422, "appears twice"),
        (b'not json at all', 422, "JSON"),
    ],
)
def test_malformed_requests_get_4xx_naming_the_problem(served, body, status, message):
    resp = requests.post(f"{served['url']}/v1/detect", data=body, headers={"content-type": "application/json"}, timeout=30)
    assert resp.status_code == status, resp.text
    assert message.lower() in resp.json()["error"].lower()


def test_oversized_requests_are_refused(served):
    too_many = {"series": [{"id": "a", "values": [1.0] * (schemas.LIMITS.max_points + 1)}], "group": "served"}
    resp = requests.post(f"{served['url']}/v1/detect", json=too_many, timeout=30)
    assert resp.status_code == 422 and "at most" in resp.json()["error"]
    big = b'{"series": [{"id": "a", "values": [' + b"1.0," * (schemas.LIMITS.max_body_bytes // 4) + b'1.0]}]}'
    resp = requests.post(f"{served['url']}/v1/detect", data=big, headers={"content-type": "application/json"}, timeout=60)
    assert resp.status_code == 413
    # and the service is still fine afterwards
    assert requests.get(f"{served['url']}/healthz", timeout=10).status_code == 200


def test_models_detectors_health_and_openapi(served):
    url = served["url"]
    models = requests.get(f"{url}/v1/models", timeout=30).json()["models"]
    assert any(m["name"] == "default.served.ensemble" and "champion" in m["aliases"] for m in models)
    assert requests.get(f"{url}/v1/detectors", timeout=30).json()["deployed"] == ["cnn", "mad", "zscore"]
    assert requests.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
    paths = requests.get(f"{url}/openapi.json", timeout=30).json()["paths"]
    assert {"/v1/detect", "/v1/stream", "/v1/forecast", "/v1/models", "/healthz", "/metrics"} <= set(paths)
    assert requests.get(f"{url}/docs", timeout=30).status_code == 200


def _deploy(name: str, prefix: str, config: dict, mlflow_store, tmp_path) -> None:
    from ray import serve

    from eyenet.serve.app import build_app

    full = {"auth": {"enabled": False}, "mlflow_uri": mlflow_store.uri, "state_uri": str(tmp_path / name), **config}
    serve.run(build_app(full), name=name, route_prefix=prefix)


def test_a_missing_member_degrades_the_ensemble_instead_of_failing(served, values, mlflow_store, tmp_path):
    from ray import serve

    _deploy("degraded", "/degraded", {"families": ["zscore", "mad"], "member_timeout_s": 10, "use_gpus": False}, mlflow_store, tmp_path)
    try:
        body = {"series": [{"id": "a", "values": values[:300].tolist()}], "group": "served"}
        resp = requests.post(f"{served['url']}/degraded/v1/detect", json=body, timeout=60)
        assert resp.status_code == 200, resp.text
        res = resp.json()["results"][0]
        assert res["degraded"] is True and res["missing"] == ["cnn"]
        assert set(res["points"][-1]["detectors"]) == {"zscore", "mad"}
        assert res["points"][-1]["ready"] and res["points"][-1]["score"] is not None
    finally:
        serve.delete("degraded")


def test_members_on_their_deployments_give_the_same_scores_as_members_in_the_router(served, values, mlflow_store,
                                                                                    tmp_path):
    """Small requests are scored by the router itself; with inline_max_points=0 every member answers
    from its family deployment (batched, multiplexed). Both paths give the same numbers."""
    from ray import serve

    _deploy("fanout", "/fanout", {"families": ["zscore", "mad", "cnn"], "inline_max_points": 0, "use_gpus": False,
                                  "member_timeout_s": 30}, mlflow_store, tmp_path)
    try:
        body = {"series": [{"id": "a", "values": values[:400].tolist()}], "group": "served"}
        here = requests.post(f"{served['url']}/v1/detect", json=body, timeout=60)
        there = requests.post(f"{served['url']}/fanout/v1/detect", json=body, timeout=60)
        assert here.status_code == there.status_code == 200, there.text
        a, b = here.json()["results"][0], there.json()["results"][0]
        assert b["degraded"] is False
        np.testing.assert_allclose(_scores(b["points"]), _scores(a["points"]), rtol=1e-9, equal_nan=True)
        assert "app;dur=" in there.headers["Server-Timing"]
        stream = {"id": "fan", "values": values[:300].tolist(), "group": "served", "reset": True}
        resp = requests.post(f"{served['url']}/fanout/v1/stream", json=stream, timeout=60)
        assert resp.status_code == 200 and "state;dur=" in resp.headers["Server-Timing"]
        np.testing.assert_allclose(_scores(resp.json()["points"]), served["model"].score(values[:300]).score,
                                   rtol=1e-9, equal_nan=True)
    finally:
        serve.delete("fanout")


def test_overload_gets_503_with_retry_after(served, values, mlflow_store, tmp_path):
    import concurrent.futures as cf

    from ray import serve

    tight = {"num_cpus": 0.1, "max_ongoing_requests": 1, "max_queued_requests": 1, "retry_after_s": 2,
             "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
    _deploy("tight", "/tight", {"families": ["zscore", "mad", "cnn"], "router": tight, "use_gpus": False,
                                "member_timeout_s": 10}, mlflow_store, tmp_path)
    try:
        body = {"series": [{"id": f"s{i}", "values": values[:1500].tolist()} for i in range(4)], "group": "served"}
        # one request alone first: the member replicas load the model (a cold load under a busy test
        # session can outlast a member timeout, and then every answer is a 503 for another reason)
        from servers import wait_until

        wait_until("the tight app to answer", lambda: requests.post(f"{served['url']}/tight/v1/detect", json=body,
                                                                  timeout=120).status_code == 200, timeout=180, every=1)
        with cf.ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda _: requests.post(f"{served['url']}/tight/v1/detect", json=body, timeout=120),
                                  range(16)))
        statuses = [r.status_code for r in codes]
        assert 503 in statuses and 200 in statuses, (statuses, [r.text[:300] for r in codes][:3])
        assert all(s in (200, 503) for s in statuses)
        # Serve's backpressure answers with the deployment's retry_after_s (2); a dependency of the app that
        # times out under the same overload answers 503 too, with its own Retry-After: every 503 has one
        after = [r.headers.get("Retry-After") for r in codes if r.status_code == 503]
        assert all(a is not None and a.isdigit() and int(a) >= 1 for a in after) and "2" in after, after
    finally:
        serve.delete("tight")


def test_torch_replicas_take_gpu_fractions_when_the_cluster_has_gpus(served, ray_cluster, values, mlflow_store,
                                                                    tmp_path):
    """Torch deployments take a quarter of the test cluster's one logical GPU each, and only while a
    served model uses them: none runs until a request needs one; the served model's cnn member
    then starts its replica (scaled up from zero) and answers from it."""
    import ray
    from ray import serve

    from eyenet.serving.settings import AppConfig

    cfg = AppConfig(families=["lstm", "gru", "cnn", "transformer", "zscore"])
    assert cfg.deployment_options("cnn", cluster_gpus=1)["ray_actor_options"]["num_gpus"] == 0.25
    assert "num_gpus" not in cfg.deployment_options("zscore", cluster_gpus=1)["ray_actor_options"]
    assert "num_gpus" not in cfg.deployment_options("cnn", cluster_gpus=0)["ray_actor_options"]
    before = ray.available_resources().get("GPU", 0)
    _deploy("gpus", "/gpus", {"families": ["lstm", "gru", "cnn", "transformer"], "member_timeout_s": 30},
            mlflow_store, tmp_path)
    try:
        status = serve.status().applications["gpus"]
        assert status.status == "RUNNING"
        assert ray.available_resources().get("GPU", 0) == pytest.approx(before)  # nothing used, nothing runs
        body = {"series": [{"id": "g", "values": values[:300].tolist()}], "group": "served"}
        resp = requests.post(f"{served['url']}/gpus/v1/detect", json=body, timeout=180)
        assert resp.status_code == 200, resp.text
        res = resp.json()["results"][0]
        assert res["missing"] == ["mad", "zscore"]  # not deployed in this app; cnn answered from its GPU replica
        running = {n: d.replica_states.get("RUNNING", 0)
                   for n, d in serve.status().applications["gpus"].deployments.items()}
        assert running["family-cnn"] == 1 and running["family-lstm"] == 0, running
        assert before - ray.available_resources().get("GPU", 0) == pytest.approx(0.25)
    finally:
        serve.delete("gpus")


def test_serve_config_yaml_matches_the_builder():
    import yaml

    from eyenet.serving.settings import AppConfig

    path = __import__("pathlib").Path(__file__).resolve().parents[1] / "serve" / "serve_config.yaml"
    doc = yaml.safe_load(path.read_text())
    (app,) = doc["applications"]
    assert app["import_path"] == "eyenet.serve.app:app_builder"
    cfg = AppConfig(**app["args"])
    assert cfg.model_dump() == AppConfig(**app["args"]).model_dump()
    deployments = {d["name"]: d for d in app.get("deployments", [])}
    for family in cfg.families:
        opts = cfg.deployment_options(family, cluster_gpus=0)
        d = deployments[opts["name"]]
        assert d["max_ongoing_requests"] == opts["max_ongoing_requests"]
        assert d["autoscaling_config"] == opts["autoscaling_config"]
        assert d["ray_actor_options"]["num_cpus"] == opts["ray_actor_options"]["num_cpus"]


def test_metrics_expose_latency_points_alarms_errors_and_versions(served, values):
    url = served["url"]
    assert _detect(url, values[:300]).status_code == 200
    requests.post(f"{url}/v1/detect", data=b'{"series": []}', headers={"content-type": "application/json"}, timeout=30)
    text = requests.get(f"{url}/metrics", timeout=30).text
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("eyenet_request_latency_ms", "eyenet_detector_latency_ms", "eyenet_batch_size",
                 "eyenet_points_scored", "eyenet_anomalies_flagged", "eyenet_errors", "eyenet_model_version"):
        assert name in families, sorted(families)
    points = [s.value for s in families["eyenet_points_scored"].samples
              if s.name.endswith("_total") and s.labels["model"] == "default.served.ensemble"]
    assert points and sum(points) >= 300  # summed over the router replicas (label `replica`)
    versions = {s.labels["detector"]: s.value for s in families["eyenet_model_version"].samples}
    assert versions == {"zscore": served["version"].version, "mad": served["version"].version,
                        "cnn": served["version"].version}
    assert any(s.labels.get("kind") == "bad_input" and s.value >= 1 for s in families["eyenet_errors"].samples)
    assert any(s.labels.get("detector") == "cnn" for s in families["eyenet_detector_latency_ms"].samples)


def test_ray_data_job_scores_a_parquet_dataset_through_the_handle(served, values, tmp_path):
    import importlib.util

    import pandas as pd

    path = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "score_parquet_job.py"
    spec = importlib.util.spec_from_file_location("score_parquet_job", path)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    ts = pd.date_range("2026-01-01", periods=300, freq="5min")
    frame = pd.concat([pd.DataFrame({"series": name, "timestamp": ts, "value": values[k:k + 300]})
                       for name, k in (("host-a", 0), ("host-b", 500))])
    frame.sample(frac=1.0, random_state=0).to_parquet(tmp_path / "points.parquet")  # shuffled on purpose
    out = job.score_dataset(str(tmp_path / "points.parquet"), group="served").to_pandas()
    assert len(out) == 600 and set(out["series"]) == {"host-a", "host-b"}
    for name, k in (("host-a", 0), ("host-b", 500)):
        got = out[out.series == name].sort_values("timestamp")["score"].to_numpy()
        want = served["model"].score(values[k:k + 300]).score
        np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


def test_autoscaling_adds_replicas_under_load(served, values, mlflow_store, tmp_path):
    import concurrent.futures as cf
    import threading

    from ray import serve

    eager = {"num_cpus": 0.1, "max_ongoing_requests": 2, "max_queued_requests": -1,
             "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                             "upscale_delay_s": 0.5, "downscale_delay_s": 600}}
    _deploy("scale", "/scale", {"families": ["zscore", "mad", "cnn"], "family": eager, "use_gpus": False,
                                "member_timeout_s": 30}, mlflow_store, tmp_path)

    def running(name: str) -> int:
        d = serve.status().applications["scale"].deployments[name]
        return int(d.replica_states.get("RUNNING", 0))

    stop = threading.Event()
    body = {"series": [{"id": f"s{i}", "values": values[:1500].tolist()} for i in range(8)], "group": "served"}

    def hammer() -> None:
        while not stop.is_set():
            requests.post(f"{served['url']}/scale/v1/detect", json=body, timeout=120)

    try:
        assert running("family-cnn") == 1
        with cf.ThreadPoolExecutor(8) as pool:
            for _ in range(8):
                pool.submit(hammer)
            deadline = time.time() + 150
            while running("family-cnn") < 2 and time.time() < deadline:
                time.sleep(2)
            stop.set()
        assert running("family-cnn") == 2
    finally:
        stop.set()
        serve.delete("scale")


def test_an_anomaly_streamed_becomes_one_alert_in_alertmanager_that_resolves(served, values, mlflow_store, tmp_path):
    """Acceptance of alarms out: a real Alertmanager routing to a webhook of the test. Alertmanager is
    stopped for a while: scoring goes on, and the alert raised meanwhile arrives once it is back."""
    import shutil

    from ray import serve

    from servers import ALERTMANAGER_MISSING, AlertmanagerServer, WebhookSink, wait_until

    if shutil.which("prometheus-alertmanager") is None and shutil.which("alertmanager") is None:
        pytest.skip(ALERTMANAGER_MISSING)
    config = presets.model_config("ensemble", {"members": [{"family": "zscore", "params": {}}]})
    config["alarm"] = {"threshold": 0.5}
    trained = training.train_and_register(config, values[:600], registry=mlflow_store, group="alerting")
    mlflow_store.set_alias(trained.version.name, "champion", trained.version.version)
    sink = WebhookSink()
    am = AlertmanagerServer(sink.url).start()
    alerts = {"resolve_after": 3, "max_backoff_s": 0.5, "receivers": {"default": {"alertmanager": [am.url]}}}
    _deploy("alerting", "/alerting", {"families": ["zscore"], "use_gpus": False, "alerts": alerts}, mlflow_store, tmp_path)
    url = f"{served['url']}/alerting"
    spike = float(values[600:700].mean() + 40 * values[600:700].std())

    def stream(series: str, xs: list[float]) -> dict:
        r = requests.post(f"{url}/v1/stream", json={"id": series, "group": "alerting", "values": xs},
                          headers={"X-EyeNet-Series": series}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def notes(status: str, series: str) -> list[dict]:
        return [a for n in sink.received for a in n["alerts"] if a["status"] == status and a["labels"]["series"] == series]

    try:
        stream("cpu", values[600:700].tolist())
        assert stream("cpu", [spike])["points"][0]["alarm"]
        stream("cpu", [spike])  # a second alarm of the same incident: still one alert
        wait_until("the firing alert", lambda: notes("firing", "cpu"), timeout=60)
        (held,) = [a for a in am.alerts() if a["labels"]["series"] == "cpu"]
        assert held["labels"]["severity"] in ("warning", "critical") and held["labels"]["tenant"] == "default"
        assert held["labels"]["model"] == "default.alerting.ensemble" and held["labels"]["alertname"] == "EyeNetAnomaly"
        assert float(held["annotations"]["value"]) == pytest.approx(spike, rel=1e-5)
        assert held["annotations"]["detectors"].startswith("zscore") and held["annotations"]["score"]

        stream("cpu", values[700:710].tolist())  # back to normal: the incident ends
        wait_until("the resolution", lambda: notes("resolved", "cpu"), timeout=60)
        assert len(notes("firing", "cpu")) == 1

        def listed() -> list:  # the console's recent alerts: the transitions, newest first
            got = requests.get(f"{url}/v1/alerts", timeout=30).json()["alerts"]
            return [(a["series"], a["state"]) for a in got if a["series"] == "cpu"]

        assert wait_until("the recent alerts", lambda: len(listed()) >= 2 and listed(), timeout=30)[:2] == [
            ("cpu", "resolved"), ("cpu", "firing")]

        am.stop()  # scoring goes on; the alert of another series waits for Alertmanager
        stream("disk", values[600:700].tolist())
        assert stream("disk", [spike])["points"][0]["alarm"]
        time.sleep(1.5)
        am.start()
        wait_until("the alert raised while Alertmanager was down", lambda: notes("firing", "disk"), timeout=60)
        health = requests.get(f"{url}/healthz", headers={"X-EyeNet-Series": "disk"}, timeout=30).json()
        assert health["alerts"]["incidents"] == 1  # disk's is still open, on the replica that holds disk
    finally:
        serve.delete("alerting")
        am.cleanup()
        sink.close()


def test_a_streamed_series_can_be_looked_at_with_its_scores_and_alarms(served, values):
    """What the console draws: the series list, and a series' points as they were answered."""
    from servers import wait_until

    url = served["url"]
    me = requests.get(f"{url}/v1/me", timeout=30).json()
    assert me["role"] == "admin" and me["roles"] == ["reader", "writer", "operator", "admin"]  # auth off
    x = values[:700].copy()
    x[680] += 40 * np.std(values[:600])
    sid = "console/web-1"  # ids may hold a slash
    r = requests.post(f"{url}/v1/stream", json={"id": sid, "values": x.tolist(), "group": "served"}, timeout=60)
    assert r.status_code == 200 and r.json()["points"][680]["alarm"], r.text
    listed = wait_until("the series to be listed", lambda: [
        s for s in requests.get(f"{url}/v1/series", params={"match": "console/"}, timeout=30).json()["series"]
        if s["id"] == sid], timeout=30)
    assert listed[0]["group"] == "served" and listed[0]["points"] == 700 and listed[0]["alarms"] >= 1
    view = requests.get(f"{url}/v1/series/{requests.utils.quote(sid, safe='')}/points",
                        params={"group": "served", "limit": 100}, timeout=30)
    assert view.status_code == 200, view.text
    body = view.json()
    assert body["id"] == sid and len(body["points"]) == 100 and body["threshold"] == pytest.approx(served["model"].threshold)
    assert body["threshold"] < 0.7  # fitted on 600 rows: the rank of a point beyond its 180 held-out scores
    spike = next(p for p in body["points"] if p["index"] == 680)
    assert spike["alarm"] and spike["score"] >= body["threshold"] and spike["severity"] in ("warning", "critical") and spike["value"] == pytest.approx(x[680])
    assert set(spike["detectors"]) == {"zscore", "mad", "cnn"}
    gone = requests.get(f"{url}/v1/series/nope/points", params={"group": "served"}, timeout=30)
    assert gone.status_code == 404 and "nope" in gone.json()["error"]
    bad = requests.get(f"{url}/v1/series", params={"limit": 0}, timeout=30)
    assert bad.status_code == 422
