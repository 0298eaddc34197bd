"""A real ``mlflow server`` on loopback: train, register and load back through it."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from eyenet.lifecycle import audit, registry, training
from eyenet.core import presets, synthetic

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=(root / "server.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=5).ok:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not come up in 120 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_train_register_and_load_by_alias_through_a_server(server, monkeypatch, tmp_path):
    monkeypatch.setenv(registry.ENV_URI, server)
    monkeypatch.setenv(audit.ENV_URI, str(tmp_path / "audit.jsonl"))  # a server store has no folder of its own here
    store = registry.Registry()
    assert store.uri == server and not store.is_embedded
    _, values, _ = synthetic.series("bytes_in", n=900, seed=8)
    values = np.asarray(values)
    result = training.train_and_register(presets.model_config("iqr"), values[:600], registry=store, group="srv")
    v = result.version
    assert (v.name, v.version, v.aliases) == ("default.srv.iqr", 1, ["challenger"])
    assert v.tags["eyenet.status"] == "registered"  # the audit mirror travels through the server
    assert [e.event for e in audit.history(v.name, registry=store)] == ["TRAIN", "REGISTER"]
    back = registry.Registry(server).load("default.srv.iqr", alias="challenger")
    np.testing.assert_array_equal(back.score(values).score, result.model.score(values).score)
    listed = requests.get(f"{server}/api/2.0/mlflow/registered-models/get", params={"name": v.name}, timeout=5).json()
    assert listed["registered_model"]["aliases"] == [{"alias": "challenger", "version": "1"}]
