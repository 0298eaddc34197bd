"""Shared test configuration."""
from __future__ import annotations

import os

import pytest

# before any test module imports MLflow (see eyenet.lifecycle.registry)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``multinode`` run last: they stop the session's one-node Ray and start a
    cluster of their own (one Ray instance per process at a time)."""
    items.sort(key=lambda item: item.get_closest_marker("multinode") is not None)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny networks on a 2-core machine run fastest, and steadiest under load, on one thread."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for every test that needs Ray (starting one costs 10-25 s here).

    Logical resources exceed the cores on purpose: tests run small trainers,
    tasks and replicas side by side; one logical GPU lets GPU placement be tested.
    """
    from eyenet.cli import cluster

    ray = cluster.connect(num_cpus=8, num_gpus=1)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """One embedded MLflow store (SQLite + local artifacts) for the session; creating its tables takes seconds."""
    from eyenet.lifecycle import registry

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    reg = registry.Registry(uri, artifact_root=(root / "artifacts").as_uri())
    reg.check()
    return reg


class MlflowServer:
    """A real ``mlflow server`` on loopback (a SQLite backend unless ``backend_uri`` names another, e.g.
    PostgreSQL; proxied artifacts), stoppable and restartable on the same port and store. ``env``: more
    environment for the server (e.g. ``PGPASSWORD``)."""

    def __init__(self, root, backend_uri: str | None = None, env: dict[str, str] | None = None) -> None:
        import socket

        self.root = root
        self.backend_uri = backend_uri or f"sqlite:///{root / 'db.sqlite'}"
        self.env = env or {}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 120.0) -> MlflowServer:
        import os
        import subprocess
        import sys
        import time
        from pathlib import Path

        import requests

        log = (self.root / "server.log").open("a")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", self.backend_uri,
             "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, env={**os.environ, **self.env},
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if requests.get(f"{self.url}/health", timeout=5).ok:
                    return self
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"mlflow server did not come up in {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the server and every process it started (its workers)."""
        import os
        import signal
        import subprocess

        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
        self.proc = None


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` for the module; the test may stop and start it again."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


# -- a served app with authentication on ------------------------------------------------------------------
#: who calls the secured app: role and tenant of each test key
SECURED_KEYS = {"admin": ("admin", "acme"), "operator": ("operator", "acme"), "writer": ("writer", "acme"),
                "reader": ("reader", "acme"), "globex-writer": ("writer", "globex"),
                "globex-operator": ("operator", "globex")}


@pytest.fixture(scope="module")
def secured_app(ray_cluster, mlflow_store, tmp_path_factory):
    """A real Serve app with authentication on (API keys in a temporary store): one ensemble of
    statistical members per tenant (acme, globex), each with a challenger, and one key per role.

    Yields a dict: ``url``, ``keys`` (name -> key), ``store`` (the KeyStore), ``models``
    (tenant -> model name), ``values`` (the training series), ``audit`` (the controller's audit log path),
    ``state`` (the stream store's folder; its snapshots are written every 0.2 s).
    """
    import socket

    import numpy as np
    from ray import serve

    from eyenet.cli.training import DEFAULT_TRAIN_METRIC, default_series
    from eyenet.core import presets
    from eyenet.lifecycle import holdout, training
    from eyenet.serve.actors import find_controller
    from eyenet.serve.app import build_app
    from eyenet.serving.auth import KeyStore

    root = tmp_path_factory.mktemp("secured")
    store = KeyStore(root / "keys.db")
    keys = {name: store.create(name, tenant, role)[1] for name, (role, tenant) in SECURED_KEYS.items()}
    series = default_series()  # recorded as the training data, so the gate can hold out the rest
    values = np.asarray(series.values)
    data = training.data_info(series, holdout.synthetic_source(DEFAULT_TRAIN_METRIC))
    config = presets.model_config("ensemble", {"members": [{"family": "zscore", "params": {}},
                                                           {"family": "mad", "params": {}}]})
    models = {}
    for tenant in ("acme", "globex"):
        first = training.train_and_register(config, values, registry=mlflow_store, group="web", tenant=tenant,
                                            data=data)
        mlflow_store.set_alias(first.version.name, "champion", first.version.version)
        training.train_and_register(config, values, registry=mlflow_store, group="web", tenant=tenant, data=data)
        models[tenant] = first.version.name
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    audit_uri = root / "audit.jsonl"
    app_config = {"families": ["zscore", "mad"], "mlflow_uri": mlflow_store.uri, "state_uri": str(root / "state"),
                  "member_timeout_s": 10, "use_gpus": False, "store": {"flush_s": 0.2, "max_backoff_s": 0.5},
                  "auth": {"keys_uri": str(root / "keys.db"),
                                                                      "cache_s": 1.0},
                  "controller": {"review_challengers": False, "audit_uri": str(audit_uri),
                                 "retrain": {"enabled": False}}}
    serve.run(build_app(app_config), name="eyenet", route_prefix="/")
    yield {"url": f"http://127.0.0.1:{port}", "keys": keys, "store": store, "models": models, "values": values,
           "audit": audit_uri, "state": root / "state"}
    serve.delete("eyenet")
    serve.shutdown()
    import ray

    from eyenet.serve.actors import STORE_NAME, find_actor, find_monitor, flush_store
    from eyenet.serve.jobs import jobs_name

    flush_store()
    # detached: they outlive the app unless stopped, and the next module's app would find this one's
    for actor in (find_controller("eyenet"), find_monitor("eyenet"), find_actor(STORE_NAME),
                  find_actor(jobs_name("eyenet"))):
        if actor is not None:
            ray.kill(actor, no_restart=True)


# -- a real PostgreSQL server ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the session (Debian's binaries, see tests/servers.py): ``.uri(db=...)``
    (no password in it), ``.password``, ``.host``, ``.port``, ``.create_database(name)`` (a fresh
    database, its URI), ``.stop()`` / ``.start()`` (same port and data), ``.terminate()``. Skips when
    the server binaries are not installed (``.ci/install-packages`` installs them)."""
    from servers import MISSING, PostgresServer, find_binaries

    if find_binaries() is None:
        pytest.skip(MISSING)
    server = PostgresServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def pg_env(postgres, monkeypatch):
    """The password as libpq reads it (``PGPASSWORD``), never inside a URI; returns the server."""
    for k, v in postgres.env().items():
        monkeypatch.setenv(k, v)
    return postgres


# -- a real Prometheus server ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def prometheus():
    """A Prometheus server for the session that accepts remote_write (Debian's binary, see
    tests/servers.py): ``.url``, ``.query(promql)``. Skips when the binary is not installed."""
    import shutil

    from servers import PROMETHEUS_MISSING, PrometheusServer

    if shutil.which("prometheus") is None:
        pytest.skip(PROMETHEUS_MISSING)
    server = PrometheusServer(remote_write=True).start()
    yield server
    server.cleanup()
