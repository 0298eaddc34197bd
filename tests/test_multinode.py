"""EyeNet on a real two-node Ray cluster (two raylets on loopback), with every piece of shared state
off the nodes: a real PostgreSQL (stream states, audit log, and the backend of a real ``mlflow
server`` with proxied artifacts).

Each node offers a custom resource (``eyenet_head``, ``eyenet_worker``) so placement can be forced
through the app's own config (``router.resources``, ``family.resources``, ``actor_resources``), and
both offer one ``eyenet_slot`` so that a router asking for 0.6 of it runs at most once per node.
The tests run in order on one app:

1. models registered from the head are served by router and family replicas on the worker;
2. a stream goes on with its history when its router replica moves to the head;
3. the controller swaps a version across the nodes with no failed request;
4. the worker node is killed under load: no acknowledged stream point is lost and serving goes on
   from the head.

These tests run last in a session (``conftest.py``): they stop the session's one-node Ray first.
"""
from __future__ import annotations

import os
import threading
import time
from collections import defaultdict

import pytest
import requests

from eyenet.cli.training import DEFAULT_TRAIN_METRIC, default_series
from eyenet.core import presets
from eyenet.lifecycle import holdout, training
from eyenet.lifecycle.registry import CHAMPION, Registry
from servers import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.multinode]

APP = "multinode"
GROUP = "mn"
NAME = f"default.{GROUP}.ensemble"
FIRST = [{"family": "zscore", "params": {"window": 3}}, {"family": "mad", "params": {"window": 3}}]  # poor
SECOND = [{"family": "zscore", "params": {}}, {"family": "mad", "params": {}}]  # better: the gate promotes it
ON_WORKER = {"eyenet_worker": 0.01}
ON_HEAD = {"eyenet_head": 0.01}
ONE_PER_NODE = {"eyenet_slot": 0.6}



def _register(store: Registry, members: list[dict]) -> int:
    series = default_series()
    data = training.data_info(series, holdout.synthetic_source(DEFAULT_TRAIN_METRIC))
    model, metrics = training.fit_model(presets.model_config("ensemble", {"members": members}), series.values)
    return store.register(model, group=GROUP, metrics=metrics, data=data, probe=series.values).version


def _champion(store: Registry) -> int:
    """The champion's version, as the test reads it: a read the MLflow server drops (a kept-alive
    connection it closed) is read again; the app's own reads retry the same way."""
    from eyenet.lifecycle.registry import RegistryError

    def read() -> int | None:
        try:
            return store.version(NAME, alias=CHAMPION).version
        except RegistryError:
            return None

    return wait_until("the champion to be read from MLflow", read, 30)


def _replica_nodes(app: str) -> dict[str, list[str]]:
    """Deployment name -> node ids of its live replicas."""
    from ray.util.state import list_actors

    nodes: dict[str, list[str]] = defaultdict(list)
    for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000, detail=True, raise_on_missing_output=False):
        prefix = f"ServeReplica:{app}:"
        if a.class_name.startswith(prefix):
            nodes[a.class_name[len(prefix):]].append(a.node_id)
    return dict(nodes)


def _actor_node(name: str, timeout_s: float = 60.0) -> str:
    """The node of the live actor ``name``, once the state API lists it alive (asked again while it
    does not: a listing can come back incomplete on a loaded machine, and an actor may be restarting);
    fails naming what the API did list for that name."""
    from ray.util.state import list_actors

    seen: list = []

    def alive() -> str | None:
        try:
            found = list_actors(filters=[("name", "=", name)], detail=True, raise_on_missing_output=True)
        except Exception as exc:  # noqa: BLE001 - an incomplete listing: ask again
            seen[:] = [f"listing failed: {type(exc).__name__}: {exc}"]
            return None
        seen[:] = [(a.state, a.node_id, getattr(a, "death_cause", None)) for a in found]
        return next((a.node_id for a in found if a.state == "ALIVE"), None)

    try:
        return wait_until(f"actor {name} to be listed alive", alive, timeout_s)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; listed for {name!r}: {seen}") from None


class Streams:
    """Clients streaming one point at a time on their own series, counting acknowledged points; a
    failed request (a replica going away) is retried with the same point after a pause."""

    def __init__(self, url: str, clients: int = 4, prefix: str = "load") -> None:
        self.url = url
        self.values = [float(v) for v in default_series().values]
        self.acked: dict[str, int] = defaultdict(int)
        self.sent: dict[str, int] = defaultdict(int)
        self.failures: list[str] = []
        self.last_ok: dict[str, float] = {}
        self.versions: dict[str, list[int]] = defaultdict(list)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(f"{prefix}-{i}",), daemon=True)
                         for i in range(clients)]

    def _client(self, sid: str) -> None:
        with requests.Session() as s:
            k = 0
            while not self._stop.is_set():
                body = {"id": sid, "values": [self.values[k % len(self.values)]], "group": GROUP}
                self.sent[sid] += 1
                try:
                    r = s.post(f"{self.url}/v1/stream", json=body, timeout=30)
                except requests.RequestException as exc:
                    self.failures.append(f"{sid}: {type(exc).__name__}")
                    time.sleep(0.2)
                    continue
                if r.status_code != 200:
                    self.failures.append(f"{sid}: {r.status_code} {r.text[:200]}")
                    time.sleep(0.2)
                    continue
                self.acked[sid] += 1
                self.last_ok[sid] = time.time()
                self.versions[sid].append(r.json()["version"])
                k += 1

    def __enter__(self) -> Streams:
        for t in self._threads:
            t.start()
        wait_until("first answers", lambda: len(self.last_ok) == len(self._threads), 120)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def all_answering_since(self, t: float) -> bool:
        return len(self.last_ok) == len(self._threads) and all(v > t for v in self.last_ok.values())


@pytest.fixture(scope="module")
def cluster(postgres, tmp_path_factory):
    """Two raylets on loopback, the session's one-node Ray stopped first; PGPASSWORD in every
    node's environment (as a cluster's node setup would export it), never in a URI."""
    import ray
    from ray.cluster_utils import Cluster

    from eyenet.cli import cluster as eyenet_cluster

    if ray.is_initialized():
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    saved = {k: os.environ.get(k) for k in postgres.env()}
    os.environ.update(postgres.env())
    for k, v in {**eyenet_cluster.QUIET_ENV, **eyenet_cluster.SERVE_ENV}.items():
        os.environ.setdefault(k, v)
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 6, "resources": {"eyenet_head": 1, "eyenet_slot": 1},
        "object_store_memory": 300 << 20})
    worker = c.add_node(num_cpus=4, resources={"eyenet_worker": 1, "eyenet_slot": 1},
                        object_store_memory=300 << 20)
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING")
    yield {"cluster": c, "head": c.head_node.node_id, "worker": worker}
    ray.shutdown()
    c.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def app(cluster, postgres, tmp_path_factory):
    from ray import serve

    from conftest import MlflowServer
    from eyenet.serve.app import build_app
    from servers import free_port

    root = tmp_path_factory.mktemp("multinode")
    backend = postgres.create_database("mn_mlflow").replace("postgresql://", "postgresql+psycopg://", 1)
    mlflow = MlflowServer(root, backend_uri=backend, env=postgres.env()).start()
    state = postgres.create_database("mn_state")
    store = Registry(mlflow.url)
    first = _register(store, FIRST)
    store.set_alias(NAME, CHAMPION, first)
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    config = {"auth": {"enabled": False}, "name": APP, "families": ["zscore", "mad"], "mlflow_uri": mlflow.url,
              "state_uri": state, "use_gpus": False, "actor_resources": {"eyenet_head": 0.001},
              "store": {"flush_s": 0.2, "max_backoff_s": 1.0, "write_behind_s": 0},  # no acknowledged point at risk
              "controller": {"poll_s": 0.5, "switch_delay_s": 0.1, "replica_ttl_s": 3.0, "check_rows": 1500,
                             "audit_uri": state, "retrain": {"enabled": False}},
              "router": {"num_cpus": 0.25, "resources": ON_WORKER,
                         "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
              "family": {"num_cpus": 0.1, "resources": ON_WORKER,
                         "autoscaling": {"min_replicas": 1, "max_replicas": 1}}}

    def deploy(**changes) -> None:
        for k, v in changes.items():
            config[k] = {**config[k], **v}
        serve.run(build_app(config), name=APP, route_prefix="/")

    deploy()
    yield {"url": f"http://127.0.0.1:{port}", "store": store, "first": first, "deploy": deploy,
           "state": state, "mlflow": mlflow, **cluster}
    serve.delete(APP)
    serve.shutdown()
    mlflow.stop()


def _stream(url: str, sid: str, values: list[float]) -> dict:
    r = requests.post(f"{url}/v1/stream", json={"id": sid, "values": values, "group": GROUP}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_models_registered_from_the_head_are_served_from_the_worker(app):
    from eyenet.serve.actors import STORE_NAME, controller_name

    nodes = _replica_nodes(APP)
    assert set(nodes) == {"router", "family-zscore", "family-mad"}, nodes
    assert all(n == app["worker"].node_id for ids in nodes.values() for n in ids), nodes
    # the app's state lives off the nodes; its actors sit where actor_resources put them
    assert _actor_node(STORE_NAME) == app["head"] and _actor_node(controller_name(APP)) == app["head"]
    values = [float(v) for v in default_series().values]
    detect = requests.post(f"{app['url']}/v1/detect", timeout=60, json={
        "series": [{"id": "d", "values": values[:400]}], "group": GROUP, "detectors": ["zscore", "mad"]})
    assert detect.status_code == 200, detect.text
    result = detect.json()["results"][0]
    assert result["model"] == NAME and result["version"] == app["first"]
    got = _stream(app["url"], "moving", values[:300])
    assert got["seen"] == 300 and got["version"] == app["first"]
    health = requests.get(f"{app['url']}/healthz", timeout=30).json()
    assert health["status"] == "ok", health
    assert health["store"]["backend"].startswith("postgresql://") and "eyenet-test-password" not in str(health)


def test_a_stream_keeps_its_history_when_its_replica_moves_to_the_other_node(app):
    values = [float(v) for v in default_series().values]
    before = _stream(app["url"], "moving", values[300:310])
    assert before["seen"] == 310
    app["deploy"](router={"resources": ON_HEAD})
    wait_until("the router to move to the head",
               lambda: _replica_nodes(APP).get("router") == [app["head"]], 180)
    after = _stream(app["url"], "moving", values[310:320])
    assert after["seen"] == 320  # the history followed the series, not the replica
    assert all(p["ready"] for p in after["points"])  # no warm-up again


def test_the_controller_swaps_a_version_across_nodes_without_a_failed_request(app):
    store = app["store"]
    with Streams(app["url"]) as load:
        t0 = time.time()
        second = _register(store, SECOND)  # the controller reviews the challenger and swaps it in
        wait_until("every client to be served the new version",
                   lambda: all(v and v[-1] == second for v in load.versions.values()), 180)
        wait_until("more answers", lambda: load.all_answering_since(time.time() - 0.5) and time.time() - t0 > 2, 30)
    assert load.failures == []
    assert _champion(store) == second
    for sid, seq in load.versions.items():  # never back to the old version once the new one answered
        assert seq[seq.index(second):] == [second] * (len(seq) - seq.index(second)), sid
    nodes = _replica_nodes(APP)
    assert nodes["router"] == [app["head"]] and nodes["family-zscore"] == [app["worker"].node_id]


def test_killing_the_worker_under_load_loses_no_acknowledged_point(app):
    head, worker = app["head"], app["worker"]
    app["deploy"](router={"resources": ONE_PER_NODE, "autoscaling": {"min_replicas": 2, "max_replicas": 2}},
                  family={"resources": {}})
    wait_until("a router on each node", lambda: sorted(_replica_nodes(APP).get("router", [])) == sorted(
        [head, worker.node_id]), 180)
    with Streams(app["url"], clients=6, prefix="kill") as load:  # series of their own: seen counts only these
        wait_until("load on both routers", lambda: sum(load.acked.values()) >= 200, 120)
        killed_at = time.time()
        app["cluster"].remove_node(worker, allow_graceful=False)
        wait_until("every client answered again after the kill", lambda: load.all_answering_since(killed_at + 1), 120)
        acked_at_kill_end = dict(load.acked)
        wait_until("a few more answers", lambda: all(load.acked[s] >= acked_at_kill_end[s] + 5 for s in acked_at_kill_end),
                   60)
    values = [float(v) for v in default_series().values]
    for sid, acked in load.acked.items():
        seen = _stream(app["url"], sid, values[:1])["seen"] - 1
        # every acknowledged point is in the series' state; a point whose answer was lost with the
        # node may be in it too (committed, then the reply died), never more than were sent
        assert acked <= seen <= load.sent[sid], (sid, acked, seen, load.sent[sid])
    health = requests.get(f"{app['url']}/healthz", timeout=30).json()
    assert health["store"]["ok"] and health["store"]["error"] is None, health
    # Ray marks the dead node's replicas dead once its health checks fail (seconds); serving did
    # not wait for that, and no replica comes back on a node that is gone
    wait_until("the dead node's router replica to be gone", lambda: _replica_nodes(APP).get("router") == [head], 120)
