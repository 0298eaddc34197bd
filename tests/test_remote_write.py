"""Prometheus in and back, on a real Prometheus and a real Serve app: Prometheus scrapes a target the
test controls and remote-writes to EyeNet, EyeNet scores the series a rule selects and writes the
scores back into Prometheus' remote-write receiver; bad bodies get 400/413 and change nothing;
out-of-order samples are dropped and a staleness marker ends a series; ``eyenet train
--prometheus`` trains from the same server; many series in one request over HTTP."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
import requests
import snappy

from eyenet.core.prometheus import STALE_NAN_BITS, RemoteSeries, encode_write
from servers import free_port, wait_until

METRIC = "eyenet_test_load"
GROUP = "node"
TENANT = "acme"
WRITE_HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                 "X-Prometheus-Remote-Write-Version": "0.1.0"}


class Target:
    """A scrape target: ``METRIC{host="web-1"}`` (selected by EyeNet's rule) around ``level`` with a
    little noise, and ``host="web-2"`` (not selected)."""

    def __init__(self) -> None:
        self.level = 40.0
        self.rng = np.random.default_rng(0)
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                v = target.level + float(target.rng.normal(0, 1.0))
                body = (f'{METRIC}{{host="web-1"}} {v}\n{METRIC}{{host="web-2"}} {v}\n').encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stack(ray_cluster, mlflow_store, prometheus, tmp_path_factory):
    """EyeNet (auth on, one writer key of tenant acme, an ensemble for group ``node`` trained on the
    target's normal level) with a remote_write rule and write-back to ``prometheus``, which scrapes
    the target every 250 ms and remote-writes everything to EyeNet."""
    from ray import serve

    from eyenet.core import presets
    from eyenet.lifecycle import training
    from eyenet.serve.actors import find_controller
    from eyenet.serve.app import build_app
    from eyenet.serving.auth import KeyStore

    root = tmp_path_factory.mktemp("remote-write")
    keys = KeyStore(root / "keys.db")
    key = keys.create("prometheus", TENANT, "writer")[1]
    reader = keys.create("dashboards", TENANT, "reader")[1]
    values = 40.0 + np.random.default_rng(1).normal(0, 1.0, 1500)
    config = presets.model_config("ensemble", {"members": [{"family": "zscore", "params": {"window": 20}},
                                                           {"family": "mad", "params": {"window": 20}}]})
    first = training.train_and_register(config, values, registry=mlflow_store, group=GROUP, tenant=TENANT)
    mlflow_store.set_alias(first.version.name, "champion", first.version.version)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app_config = {"families": ["zscore", "mad"], "mlflow_uri": mlflow_store.uri, "state_uri": str(root / "state"),
                  "use_gpus": False, "auth": {"keys_uri": str(root / "keys.db")},
                  "remote_write": {"rules": [{"match": f'{METRIC}{{host="web-1"}}', "group": GROUP}]},
                  "writeback": {"url": f"{prometheus.url}/api/v1/write", "interval_s": 0.3},
                  "controller": {"review_challengers": False, "retrain": {"enabled": False}},
                  "monitor": {"push_s": 0.5}}
    serve.run(build_app(app_config), name="eyenet", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    target = Target()
    before = prometheus.reconfigure({
        "global": {"scrape_interval": "250ms", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "load", "scrape_interval": "250ms", "static_configs": [
            {"targets": [target.address]}]}],
        "remote_write": [{"url": f"{url}/api/v1/write", "authorization": {"credentials": key},
                          "queue_config": {"batch_send_deadline": "250ms", "min_backoff": "50ms",
                                           "max_backoff": "1s"}}],
    })
    yield {"url": url, "key": key, "reader": reader, "prometheus": prometheus, "target": target, "model": first.version.name, "threshold": first.model.threshold,
           "headers": {"Authorization": f"Bearer {key}"}}
    prometheus.reconfigure(before)
    target.close()
    serve.delete("eyenet")
    serve.shutdown()
    import ray

    from eyenet.serve.actors import STORE_NAME, find_actor, find_monitor, flush_store

    flush_store()
    # detached: they outlive the app unless stopped, and the next module's app would find this one's
    for actor in (find_controller("eyenet"), find_monitor("eyenet"), find_actor(STORE_NAME)):
        if actor is not None:
            ray.kill(actor, no_restart=True)


def _metric(url: str, headers: dict[str, str], name: str, **labels: str) -> float:
    """The sum of a counter over the router replicas (the app's monitor gathers them every push_s)."""
    text = requests.get(f"{url}/metrics", headers=headers, timeout=30).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _diagnosis(stack: dict[str, Any]) -> str:
    """What each side saw: EyeNet's remote_write and write-back counters, Prometheus' log tail."""
    url, headers = stack["url"], stack["headers"]
    text = requests.get(f"{url}/metrics", headers=headers, timeout=30).text
    ours = [line for line in text.splitlines() if line.startswith(("eyenet_remote_write", "eyenet_writeback",
                                                                   "eyenet_errors_total"))]
    health = requests.get(f"{url}/healthz", timeout=30).json()
    log = stack["prometheus"].log.read_text()[-3000:]
    return "\n".join([*ours, f"writeback: {health.get('writeback')}", "prometheus log:", log])


def test_a_scraped_anomaly_comes_back_as_an_alarm_and_as_a_score_series(stack):
    prom, target = stack["prometheus"], stack["target"]
    selected = f'{{__name__="eyenet_anomaly_score",metric="{METRIC}",host="web-1"}}'
    # warm-up: the window fills, then ready scores arrive in Prometheus through the write-back
    try:
        wait_until("scores of the scraped series in Prometheus",
                   lambda: (r := prom.query(f"count_over_time({selected}[5m])")) and float(r[0]["value"][1]) >= 30,
                   timeout=120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_diagnosis(stack)}") from None
    target.level = 400.0  # the incident: ten times the usual level
    time.sleep(1.5)
    target.level = 40.0
    alarm = f'max_over_time(eyenet_alarm{{metric="{METRIC}",host="web-1"}}[2m])'
    got = wait_until("the alarm in Prometheus", lambda: (r := prom.query(alarm)) and float(r[0]["value"][1]) == 1,
                     timeout=60)
    assert got
    (series,) = prom.query(selected)
    labels = series["metric"]
    assert labels["model"] == stack["model"] == f"{TENANT}.{GROUP}.ensemble"
    assert labels["version"] == "1" and labels["job"] == "load"
    peak = prom.query(f"max_over_time({selected}[2m])")
    assert float(peak[0]["value"][1]) >= stack["threshold"]  # the score that raised the alarm
    # the series no rule selects is not scored, and Prometheus' own series (up, ...) were counted, not scored
    assert prom.query(f'eyenet_anomaly_score{{metric="{METRIC}",host="web-2"}}') == []
    url, headers = stack["url"], stack["headers"]
    wait_until("remote_write counters at /metrics", lambda: (
        _metric(url, headers, "eyenet_remote_write_samples_total", outcome="scored") > 30
        and _metric(url, headers, "eyenet_remote_write_samples_total", outcome="unselected") > 30
        and _metric(url, headers, "eyenet_anomalies_flagged_total", model=stack["model"]) >= 1), timeout=30)
    # write-back figures are each router replica's own, and /healthz is answered by one of them: ask until
    # the replica that wrote the scores answers (the other may have written none)
    seen: list[dict[str, Any]] = []

    def sent() -> dict[str, Any] | None:
        wb = requests.get(f"{url}/healthz", timeout=30).json()["writeback"]
        seen.append(wb)
        return wb if wb["sent"] > 0 else None

    wb = wait_until("a router replica that wrote scores back", sent, timeout=30, every=0.2)
    assert wb["sent"] > 0 and all(w["dropped"] == 0 for w in seen), seen
    # Prometheus refuses a sample it already holds with another value: a point scored again because its
    # series moved to another router replica before its newest state was written (a replica starved
    # of CPU losing its lease). The writer drops such a sample, counts it and says so; a few at most.
    assert wb["error"] is None or ("refused" in wb["error"] and wb["rejected"] <= max(3, wb["sent"] // 100)), wb


def _write(stack: dict[str, Any], body: bytes) -> requests.Response:
    return requests.post(f"{stack['url']}/api/v1/write", data=body, timeout=30,
                         headers={**WRITE_HEADERS, **stack["headers"]})


def test_bad_bodies_get_400_or_413_and_change_nothing(stack):
    url, headers = stack["url"], stack["headers"]
    streams = requests.get(f"{url}/healthz", timeout=30).json()["streams"]
    valid = encode_write([RemoteSeries({"__name__": METRIC, "host": "web-1", "src": "bad"},
                                       np.array([1_000, 2_000], dtype=np.int64), np.array([1.0, 2.0]))])
    huge = snappy.compress(b"\0" * (70 << 20))  # decompresses past remote_write.max_decoded_bytes
    cases = [(b"not snappy at all", 400, "snappy"), (valid[: len(valid) // 2], 400, ""),
             (snappy.compress(b"\xff\xff\xff garbage protobuf"), 400, ""), (huge, 413, "")]
    for body, status, word in cases:
        r = _write(stack, body)
        assert r.status_code == status, (r.status_code, r.text)
        assert word in r.json()["error"]
    r = requests.post(f"{url}/api/v1/write", data=b"x" * (9 << 20), timeout=60, headers={**WRITE_HEADERS, **headers})
    assert r.status_code == 413
    assert requests.post(f"{url}/api/v1/write", data=valid, timeout=30, headers=WRITE_HEADERS).status_code == 401
    reader = {"Authorization": f"Bearer {stack['reader']}"}
    r = requests.post(f"{url}/api/v1/write", data=valid, timeout=30, headers={**WRITE_HEADERS, **reader})
    assert r.status_code == 403 and "needs writer" in r.json()["error"]
    assert requests.get(f"{url}/healthz", timeout=30).json()["streams"] == streams


def test_late_samples_are_dropped_and_a_stale_marker_ends_the_series(stack):
    url, headers = stack["url"], stack["headers"]
    labels = {"__name__": METRIC, "host": "web-1", "src": "direct"}
    t0 = int(time.time() * 1000) - 600_000
    ts = t0 + 1000 * np.arange(30, dtype=np.int64)
    body = encode_write([RemoteSeries(labels, ts, 40.0 + np.sin(np.arange(30)))])
    late0 = _metric(url, headers, "eyenet_remote_write_samples_total", outcome="late")
    assert _write(stack, body).status_code == 204
    assert _write(stack, body).status_code == 204  # a retried request: every sample is at or before the last
    late = lambda: _metric(url, headers, "eyenet_remote_write_samples_total", outcome="late") - late0  # noqa: E731
    wait_until("30 late samples counted", lambda: late() == 30, timeout=30)
    stale = np.array([np.frombuffer(np.uint64(STALE_NAN_BITS).tobytes(), dtype=np.float64)[0]])
    assert _write(stack, encode_write([RemoteSeries(labels, ts[-1:] + 1000, stale)])).status_code == 204
    # the series ended: the same samples again start it afresh instead of being late
    assert _write(stack, body).status_code == 204
    wait_until("the stale marker counted", lambda: _metric(url, headers, "eyenet_remote_write_samples_total",
                                                           outcome="stale") >= 1, timeout=30)
    time.sleep(1.0)  # another push of the replicas' counters: the late count must not have moved
    assert late() == 30


def test_train_from_the_same_prometheus(stack, mlflow_store, monkeypatch, capsys):
    from eyenet import cli

    monkeypatch.setenv("EYENET_MLFLOW_URI", mlflow_store.uri)
    query = f'{METRIC}{{host="web-1"}}'
    wait_until("a minute of the series in Prometheus",
               lambda: (r := stack["prometheus"].query(f"count_over_time({query}[2m])"))
               and float(r[0]["value"][1]) >= 240, timeout=120)
    code = cli.main(["train", "--detector", "zscore", "--prometheus", stack["prometheus"].url, "--query", query,
                     "--start", "now-2m", "--end", "now", "--step", "250ms", "--tenant", TENANT, "--group", "trained"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert mlflow_store.version(f"{TENANT}.trained.zscore", alias="challenger").version >= 1


def test_many_series_in_one_request_over_http(stack):
    url, headers = stack["url"], stack["headers"]
    rng = np.random.default_rng(4)
    series = [{"id": f"batch-{k}", "values": (40 + rng.normal(0, 1, 30)).tolist()} for k in range(50)]
    r = requests.post(f"{url}/v1/stream/batch", json={"group": GROUP, "series": series}, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["id"] for x in results] == [s["id"] for s in series]
    assert all(x["seen"] == 30 and len(x["points"]) == 30 for x in results)
    one = requests.post(f"{url}/v1/stream/batch", headers=headers, timeout=60,
                        json={"group": GROUP, "series": [{"id": "batch-0", "values": [None, 41.0]}]}).json()
    (res,) = one["results"]
    assert res["points"][0]["imputed"] is True and res["points"][0]["score"] is None
    assert res["seen"] == 32
