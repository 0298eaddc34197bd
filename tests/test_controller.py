"""The model controller on a real Serve app and a real ``mlflow server``: live swaps under load, the gate,
the serving check, rollback, and the controller, a router replica or MLflow going away.

The tests run in order on one app and one model; each starts from whatever the previous left as
champion. Every test keeps clients busy while the champion moves and checks what they saw.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from collections import defaultdict

import pytest
import requests

from eyenet.lifecycle import audit, holdout, promotion, training
from eyenet.core import presets
from eyenet.cli.training import DEFAULT_TRAIN_METRIC, default_series
from eyenet.lifecycle.registry import CHAMPION, Registry
from servers import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP = "ctl-test"
GROUP = "ctl"
NAME = f"default.{GROUP}.ensemble"
GOOD = [{"family": "zscore", "params": {}}, {"family": "mad", "params": {}}]
POOR = [{"family": "zscore", "params": {"window": 3}}, {"family": "mad", "params": {"window": 3}}]
SWITCH_BUDGET_S = 5.0  # issue target: alias move to every replica serving the new version


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _register(store: Registry, members: list[dict], *, nan: bool = False) -> int:
    """Train an ensemble on the default synthetic series and register it (it becomes the challenger)."""
    series = default_series()
    data = training.data_info(series, holdout.synthetic_source(DEFAULT_TRAIN_METRIC))
    model, metrics = training.fit_model(presets.model_config("ensemble", {"members": members}), series.values)
    if nan:
        model.detector.members_[0].detector.spread_floor_ = float("nan")  # every score NaN
    return store.register(model, group=GROUP, metrics=metrics, data=data, probe=series.values).version


def _champion(store: Registry) -> int:
    return store.version(NAME, alias=CHAMPION).version



class Load:
    """Clients sending ``/v1/detect`` back to back, each recording (status, version) per request."""

    def __init__(self, url: str, clients: int = 6, points: int = 48) -> None:
        values = default_series().values
        self.body = {"series": [{"id": "load", "values": [float(x) for x in values[:points]]}], "group": GROUP}
        self.url = url
        self.seen: dict[int, list[tuple[int, int | None, str]]] = defaultdict(list)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _client(self, i: int) -> None:
        with requests.Session() as s:
            while not self._stop.is_set():
                try:
                    r = s.post(f"{self.url}/v1/detect", json=self.body, timeout=30)
                    version = r.json()["results"][0]["version"] if r.status_code == 200 else None
                    self.seen[i].append((r.status_code, version, "" if r.status_code == 200 else r.text[:300]))
                except Exception as exc:  # noqa: BLE001 - recorded as a failure
                    self.seen[i].append((0, None, f"{type(exc).__name__}: {exc}"[:300]))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        wait_until("first responses", lambda: all(self.seen[i] for i in range(len(self._threads))), 60)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def serving(self, version: int) -> bool:
        """Every client's latest answer came from ``version``."""
        return all(self.seen[i] and self.seen[i][-1][1] == version for i in range(len(self._threads)))

    def wait_for(self, version: int, timeout: float = 120.0) -> None:
        wait_until(f"every client to get version {version}", lambda: self.serving(version), timeout, every=0.25)
        n = {i: len(v) for i, v in self.seen.items()}  # a few more answers each after the switch
        wait_until("answers after the switch", lambda: all(len(self.seen[i]) >= n[i] + 3 for i in n), 30)

    def failures(self) -> list[tuple[int, str]]:
        return [(code, text) for v in self.seen.values() for code, _, text in v if code != 200]

    def versions(self) -> set[int]:
        return {version for v in self.seen.values() for _, version, _ in v}

    def assert_moved(self, old: int, new: int) -> None:
        """Every client saw ``old`` then ``new``, and never ``old`` again once it had seen ``new``."""
        for i, answers in self.seen.items():
            seq = [version for _, version, _ in answers]
            assert set(seq) <= {old, new}, f"client {i} saw versions {sorted(set(seq))}"
            assert seq[-1] == new
            first_new = seq.index(new)
            assert old not in seq[first_new:], f"client {i} went back to version {old} after {new}"


@pytest.fixture(scope="module")
def app(ray_cluster, mlflow_server, tmp_path_factory):
    from ray import serve

    from eyenet.serve.app import build_app
    from eyenet.serve.actors import find_controller

    root = tmp_path_factory.mktemp("controller")
    audit_uri = str(root / "audit.jsonl")  # the test's and the controller's events in one log
    before = os.environ.get(audit.ENV_URI)
    os.environ[audit.ENV_URI] = audit_uri
    store = Registry(mlflow_server.url)
    first = _register(store, POOR)
    assert promotion.review(store, NAME, actor="test").champion == first
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = {"auth": {"enabled": False}, "name": APP, "families": ["zscore", "mad"], "mlflow_uri": mlflow_server.url,
              "state_uri": str(root / "state"), "use_gpus": False,
              "controller": {"poll_s": 0.5, "max_backoff_s": 2.0, "switch_delay_s": 0.1, "replica_ttl_s": 3.0,
                             "check_rows": 1500, "audit_uri": audit_uri}}
    serve.run(build_app(config), name=APP, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    yield {"url": url, "store": store, "server": mlflow_server}
    serve.delete(APP)
    serve.shutdown()
    ctl = find_controller(APP)
    if ctl is not None:
        import ray

        ray.kill(ctl, no_restart=True)
    if before is None:
        os.environ.pop(audit.ENV_URI, None)
    else:
        os.environ[audit.ENV_URI] = before


def _history(url: str) -> list[dict]:
    resp = requests.get(f"{url}/v1/models/{NAME}/history", timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()["events"]


def _status(url: str) -> dict:
    resp = requests.get(f"{url}/v1/controller", timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _swap(url: str, to: int, since: float) -> dict:
    """The controller's switch to version ``to`` seen after ``since``, once complete."""
    return wait_until(f"the switch to version {to} to be recorded",
                      lambda: next((s for s in reversed(_status(url)["swaps"])
                                    if s["to"] == to and s["detected"] >= since and ("completed" in s or "error" in s)),
                                   None), 60)


def test_a_better_challenger_is_swapped_in_under_load_without_a_failed_request(app):
    url, store = app["url"], app["store"]
    old = _champion(store)
    with Load(url) as load:
        load.wait_for(old)
        t0 = time.time()
        new = _register(store, GOOD)  # the controller reviews the new challenger by itself
        load.wait_for(new)
    assert load.failures() == []
    load.assert_moved(old, new)
    assert _champion(store) == new
    swap = _swap(url, new, t0)
    assert "error" not in swap and not swap.get("not_ready"), swap
    assert swap["completed"] - swap["detected"] <= SWITCH_BUDGET_S, swap
    assert swap["replicas"] >= 2  # every router replica took part
    events = [(e["event"], e["version"]) for e in _history(url)]
    assert ("PROMOTE", new) in events and ("SERVE", new) in events
    assert events.index(("PROMOTE", new)) < events.index(("SERVE", new))
    serve_event = next(e for e in _history(url) if (e["event"], e["version"]) == ("SERVE", new))
    assert serve_event["actor"] == "controller" and serve_event["metrics"]["switch_s"] <= SWITCH_BUDGET_S


def test_a_worse_and_a_nan_challenger_are_rejected_and_never_served(app):
    url, store = app["url"], app["store"]
    champ = _champion(store)
    with Load(url) as load:
        worse = _register(store, POOR)
        wait_until("the worse challenger to be archived",
                   lambda: store.version(NAME, worse).tags.get("eyenet.status") == audit.ARCHIVED)
        broken = _register(store, GOOD, nan=True)
        wait_until("the NaN challenger to be archived",
                   lambda: store.version(NAME, broken).tags.get("eyenet.status") == audit.ARCHIVED)
        time.sleep(1.0)
    assert load.failures() == []
    assert load.versions() == {champ}
    assert _champion(store) == champ
    rejects = {e["version"]: e["reason"] for e in _history(url) if e["event"] == "REJECT"}
    assert "not better" in rejects[worse]
    assert "non-finite" in rejects[broken]
    app["broken"] = broken


def test_a_version_forced_past_the_gate_that_cannot_serve_is_refused_and_the_alias_moved_back(app):
    url, store = app["url"], app["store"]
    champ, broken = _champion(store), app["broken"]
    with Load(url) as load:
        resp = requests.post(f"{url}/v1/models/{NAME}/promote",
                             json={"version": broken, "force": True, "reason": "operator override"}, timeout=120)
        time.sleep(1.0)
    assert resp.status_code == 409, resp.text
    assert f"version {broken} cannot serve" in resp.json()["error"] and "non-finite" in resp.json()["error"]
    assert load.failures() == []
    assert load.versions() == {champ}  # the broken version never answered a request
    assert _champion(store) == champ
    history = _history(url)
    events = [(e["event"], e["version"]) for e in history]
    tail = events[events.index(("PROMOTE", broken)):]
    assert ("REJECT", broken) in tail and ("ROLLBACK", champ) in tail
    forced = history[events.index(("PROMOTE", broken))]
    assert forced["actor"] == "auth-off" and "forced past the gate: operator override" in forced["reason"]


def test_rollback_over_http_under_load_without_a_failed_request(app):
    url, store = app["url"], app["store"]
    champ = _champion(store)
    with Load(url) as load:
        t0 = time.time()
        resp = requests.post(f"{url}/v1/models/{NAME}/rollback", json={"reason": "pager says so"}, timeout=120)
        assert resp.status_code == 200, resp.text
        back = resp.json()["serving"]["version"]
        assert back != champ and resp.json()["outcome"]["action"] == "rolled-back"
        load.wait_for(back)
    assert load.failures() == []
    load.assert_moved(champ, back)
    assert _champion(store) == back
    rollback = [e for e in _history(url) if e["event"] == "ROLLBACK"][-1]
    assert rollback["version"] == back and "pager says so" in rollback["reason"]
    swap = _swap(url, back, t0)
    assert "error" not in swap and swap["completed"] - t0 <= SWITCH_BUDGET_S, swap  # from the request itself


def test_a_killed_controller_leaves_serving_alone_and_comes_back_to_finish_a_promotion(app):
    import ray

    from eyenet.serve.actors import find_controller

    url, store = app["url"], app["store"]
    champ = _champion(store)
    ctl = find_controller(APP)
    first = ray.get(ctl.ping.remote(), timeout=30)
    with Load(url) as load:
        ray.kill(ctl, no_restart=False)
        time.sleep(2.0)  # requests keep coming meanwhile

        def back() -> bool:
            try:
                return ray.get(find_controller(APP).ping.remote(), timeout=5) != first
            except Exception:  # noqa: BLE001 - restarting
                return False

        wait_until("the controller to come back", back, 60)
        status = wait_until("the restarted controller to learn what serves",
                            lambda: (s := _status(url))["table"].get(NAME, {}).get("version") == champ and s)
        assert status["incarnation"] != first
        new = _register(store, GOOD)
        load.wait_for(new)
    assert load.failures() == []
    load.assert_moved(champ, new)
    assert _champion(store) == new


def test_mlflow_down_for_a_while_no_failed_request_and_the_controller_catches_up(app):
    url, store, server = app["url"], app["store"], app["server"]
    champ = _champion(store)
    with Load(url) as load:
        server.stop()
        try:
            health = wait_until("/healthz to report the registry down",
                                lambda: (h := requests.get(f"{url}/healthz", timeout=30).json())["status"] == "degraded"
                                     and h, 30)
            assert any("model registry unreachable" in p for p in health["problems"]), health
            down = _status(url)["health"]
            assert down["ok"] is False and down["failures"] >= 1 and down["error"]
            time.sleep(3.0)
        finally:
            server.start()
        out = promotion.rollback(store, NAME, reason="moved after the outage", actor="test")
        load.wait_for(out.champion, timeout=60)
    assert load.failures() == []
    load.assert_moved(champ, out.champion)
    wait_until("/healthz to recover", lambda: requests.get(f"{url}/healthz", timeout=30).json()["status"] == "ok", 30)
    assert _status(url)["health"]["ok"] is True


def test_a_router_replica_killed_during_a_switch_does_not_stop_it(app):
    import ray

    url, store = app["url"], app["store"]
    champ = _champion(store)
    target = next(v.version for v in store.versions(NAME)
                  if v.version != champ and v.tags.get("eyenet.status") != audit.ARCHIVED)
    replica = requests.get(f"{url}/healthz", timeout=30).json()["replica"]
    t0 = time.time()
    promotion.promote(store, NAME, target, force=True, reason="switch with a replica down", actor="test")
    ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=False)
    swap = _swap(url, target, t0)
    assert "error" not in swap, swap
    served = set()

    def answered() -> bool:
        try:
            body = {"series": [{"id": "after", "values": [1.0, 2.0, 3.0]}], "group": GROUP}
            served.add(requests.post(f"{url}/v1/detect", json=body, timeout=30).json()["results"][0]["version"])
        except (requests.RequestException, KeyError):  # the killed replica's requests may fail
            return False
        return len(served) >= 1

    wait_until("a detect after the switch", answered, 60)
    status = wait_until("every live replica to serve the new version",
                        lambda: (s := _status(url))["replicas"] and all(
                            r["serving"].get(NAME) == target for r in s["replicas"].values()) and s, 60)
    assert status["table"][NAME]["version"] == target
    assert served == {target}
