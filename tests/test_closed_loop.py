"""The loop closed on a real Serve app: app-wide metrics and feedback, drift seen by a real Prometheus,
and a level shift that retrains, gates and swaps in a model whose false alarms stop.

The served model is deliberately one that goes stale: a seasonal baseline plus a z-score, with the
final score calibrated against the training data (no running rank), so after the shift the old
version keeps alarming on what is now normal.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from eyenet.lifecycle import holdout, promotion, training
from eyenet.core import presets
from eyenet.cli.training import DEFAULT_TRAIN_METRIC, default_series
from eyenet.lifecycle.registry import CHAMPION
from servers import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP = "loop-test"
GROUP = "loop"
NAME = f"default.{GROUP}.ensemble"
MEMBERS = [{"family": "seasonal", "params": {}}, {"family": "zscore", "params": {}}]
RULES = Path(__file__).resolve().parents[1] / "serve" / "prometheus" / "rules.yml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def before_shift() -> np.ndarray:
    return np.asarray(default_series().values, dtype=float)


def after_shift(n: int, seed: int = 2) -> np.ndarray:
    """The new normal: 20 units higher, heavier-tailed noise."""
    rng = np.random.default_rng(seed)
    return float(np.median(before_shift())) + 20 + 8 * rng.standard_t(2, n)


@pytest.fixture(scope="module")
def app(ray_cluster, mlflow_store, tmp_path_factory):
    from ray import serve

    from eyenet.serve.app import build_app
    from eyenet.serve.actors import find_controller
    from eyenet.serve.actors import find_monitor

    root = tmp_path_factory.mktemp("loop")
    series = default_series()
    config = presets.model_config("ensemble", {"members": MEMBERS})
    config["rank"] = None  # scores calibrated against training data only: a model that goes stale
    model, metrics = training.fit_model(config, series.values)
    data = training.data_info(series, holdout.synthetic_source(DEFAULT_TRAIN_METRIC))
    first = mlflow_store.register(model, group=GROUP, metrics=metrics, data=data, probe=series.values).version
    assert promotion.review(mlflow_store, NAME, actor="test").champion == first
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app_config = {
        "auth": {"enabled": False}, "name": APP, "families": ["seasonal", "zscore"], "mlflow_uri": mlflow_store.uri, "use_gpus": False,
        "state_uri": str(root / "state"),
        "controller": {"poll_s": 0.5, "retrain": {"drift_for_s": 2, "cooldown_s": 600, "rows": 600, "check_s": 1,
                                                  "precision_below": None, "root": str(root / "retrain"),
                                                  "auto_promote": True}},
        "monitor": {"drift_window": 500, "drift_min_points": 100, "push_s": 0.5,
                    "feedback_path": str(root / "feedback.jsonl")},
    }
    serve.run(build_app(app_config), name=APP, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    yield {"url": url, "port": port, "store": mlflow_store, "first": first, "root": root}
    serve.delete(APP)
    serve.shutdown()
    import ray

    for actor in (find_controller(APP), find_monitor(APP)):
        if actor is not None:
            ray.kill(actor, no_restart=True)


def _stream(url: str, sid: str, values: np.ndarray, chunk: int = 20) -> list[dict]:
    out = []
    for i in range(0, len(values), chunk):
        body = {"id": sid, "values": [float(v) for v in values[i:i + chunk]], "group": GROUP}
        r = requests.post(f"{url}/v1/stream", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


def test_feedback_and_app_wide_metrics(app):
    url = app["url"]
    _stream(url, "fb-1", before_shift()[:200])
    r = requests.post(f"{url}/v1/feedback", json={"id": "fb-1", "group": GROUP, "label": "false_alarm",
                                                   "indices": [150, 151]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == NAME and r.json()["total"]["false_alarm"] == 2
    bad = [({"id": "fb-1", "group": GROUP, "label": "maybe", "indices": [1]}, 422, "label"),
           ({"id": "fb-1", "group": GROUP, "label": "false_alarm", "indices": [1], "timestamps": [1]}, 422, "either"),
           ({"id": "fb-1", "group": GROUP, "label": "false_alarm", "indices": [3, 3]}, 422, "indices[1]"),
           ({"id": "fb-1", "group": "nobody", "label": "false_alarm", "indices": [1]}, 404, "default.nobody.ensemble")]
    for body, status, words in bad:
        resp = requests.post(f"{url}/v1/feedback", json=body, timeout=30)
        assert resp.status_code == status and words in resp.text, (body, resp.status_code, resp.text)

    def merged() -> str | None:
        text = requests.get(f"{url}/metrics", timeout=30).text
        ok = (f'eyenet_feedback_total{{label="false_alarm",model="{NAME}",replica=' in text
              and 'eyenet_drift_threshold{test="psi"} 0.3' in text
              and f'eyenet_false_positive_rate{{model="{NAME}"}}' in text
              and f'eyenet_drift_score{{feature="value",model="{NAME}",test="psi"}}' in text)
        return text if ok else None

    text = wait_until("app-wide metrics", merged, 30)
    scored = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("eyenet_points_scored_total{") and f'model="{NAME}"' in line]
    assert sum(scored) >= 200  # every replica's count, each labelled with its replica
    models = requests.get(f"{url}/v1/models", timeout=30).json()
    mon = models["monitoring"][NAME]
    assert mon["version"] == app["first"] and set(mon["drift"]) == {"value", "calibrated", "score"}
    assert mon["feedback"]["total"]["false_alarm"] == 2


@pytest.fixture()
def prometheus(app, tmp_path):
    """A real Prometheus on loopback scraping the app every second with EyeNet's rules (their `for:`
    durations set to 0 so an alert fires on the first evaluation that holds)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (make test installs Debian's package where it can)")
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    port = _free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "scrape_configs": [{"job_name": "eyenet", "static_configs": [{"targets": [f"127.0.0.1:{app['port']}"]}]}],
    }))
    proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"))
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                q = requests.get(f"{base}/api/v1/query", params={"query": "up{job='eyenet'}"}, timeout=5).json()
                return any(r["value"][1] == "1" for r in q["data"]["result"])
            except (requests.RequestException, KeyError, ValueError):
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                return False

        wait_until("Prometheus to scrape EyeNet", up, 60)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _firing(base: str, alert: str) -> list[dict]:
    alerts = requests.get(f"{base}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alert and a["state"] == "firing"]


def test_a_level_shift_fires_the_drift_alert_retrains_and_the_false_alarms_stop(app, prometheus):
    url, store, first = app["url"], app["store"], app["first"]
    sid = "web-1"
    _stream(url, sid, before_shift())  # the training data itself: the drift window matches its reference
    time.sleep(2.0)  # pushed to the monitor, scraped and evaluated
    q = requests.get(f"{prometheus}/api/v1/query", params={"query": f'eyenet_points_scored_total{{model="{NAME}"}}'},
                     timeout=5).json()
    assert q["data"]["result"], "EyeNet's series did not reach Prometheus"
    assert not _firing(prometheus, "EyeNetDrift")

    shifted = after_shift(6000)
    by_version: dict[int, list[int]] = {}  # version -> [points, alarms] after the shift
    fired_at = promoted_at = None
    shift_at = time.time()
    i = 0
    while time.time() - shift_at < 240:
        chunk = shifted[i % len(shifted):i % len(shifted) + 20]
        i += 20
        (resp,) = _stream(url, sid, chunk)
        counts = by_version.setdefault(resp["version"], [0, 0])
        counts[0] += len(resp["points"])
        counts[1] += sum(p["alarm"] for p in resp["points"])
        if fired_at is None and i % 200 == 0 and _firing(prometheus, "EyeNetDrift"):
            fired_at = time.time()
        if resp["version"] != first and promoted_at is None:
            promoted_at = time.time()
        if promoted_at is not None and by_version[resp["version"]][0] >= 1000:
            break
    assert fired_at is not None, "the drift alert never fired in Prometheus"
    assert promoted_at is not None, f"no retrained model served; controller: {requests.get(f'{url}/v1/controller').text}"
    new = store.version(NAME, alias=CHAMPION).version
    assert new != first and set(by_version) == {first, new}
    old_rate = by_version[first][1] / by_version[first][0]
    new_rate = by_version[new][1] / by_version[new][0]
    assert old_rate > 0.01 and new_rate < old_rate / 3, by_version

    events = requests.get(f"{url}/v1/models/{NAME}/history", timeout=30).json()["events"]
    kinds = [(e["event"], e["version"]) for e in events]
    retrain = next(e for e in events if e["event"] == "RETRAIN")
    assert retrain["version"] == first and "drift of value" in retrain["reason"] and retrain["metrics"]["psi"] > 0.3
    after = kinds[kinds.index(("RETRAIN", first)):]
    for step in (("TRAIN", new), ("REGISTER", new), ("GATE-PASS", new), ("PROMOTE", new), ("SERVE", new)):
        assert step in after, (step, after)
    status = requests.get(f"{url}/v1/controller", timeout=30).json()
    (rec,) = [r for r in status["retrains"] if r.get("version") == new]
    assert rec["outcome"] == "promoted" and rec["series"] == sid
    # one retraining per cool-down: the new model's drift windows start empty, and no second run started
    assert len(status["retrains"]) == 1 and not status["retraining"]
