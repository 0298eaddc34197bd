"""`eyenet up` / `status` / `down` as a user runs them: separate processes, a real port, nothing left behind."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eyenet(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("eyenet"))
    return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_up_serves_status_reports_and_down_leaves_nothing_running(tmp_path):
    from eyenet.cli import stack

    port = _free_port()
    env = {**os.environ, "EYENET_PORT": str(port)}
    env.pop("EYENET_MLFLOW_URI", None)
    up = _eyenet("up", "--families", "seasonal,lstm,transformer", cwd=tmp_path, env=env)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        assert f"EyeNet is up at http://127.0.0.1:{port}" in up.stdout
        assert "seasonal" in up.stdout and "ensemble" in up.stdout  # per-detector scores of the example
        assert "alarm: YES" in up.stdout  # the example's spike is caught
        # the first `up` created an admin key, readable by its owner only; without a key: 401
        key_file = tmp_path / ".eyenet" / "admin.key"
        assert key_file.stat().st_mode & 0o777 == 0o600 and f"Bearer $(cat {key_file})" in up.stdout
        key = key_file.read_text().strip()
        body = {"series": [{"id": "a", "values": [float(i % 7) for i in range(200)]}]}
        assert requests.post(f"http://127.0.0.1:{port}/v1/detect", json=body, timeout=60).status_code == 401
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=60).json()["auth"] == "on"
        resp = requests.post(f"http://127.0.0.1:{port}/v1/detect", json=body, timeout=60,
                             headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code == 200, resp.text
        res = resp.json()["results"][0]
        assert res["model"] == "default.default.ensemble" and res["version"] == 1
        assert set(res["points"][-1]["detectors"]) == {"seasonal", "lstm"}
        status = _eyenet("status", "--json", cwd=tmp_path, env=env)
        assert status.returncode == 0, status.stderr[-2000:]
        st = json.loads(status.stdout)
        assert st["app"] == "RUNNING"
        assert {"router", "family-seasonal", "family-lstm", "family-transformer"} <= set(st["deployments"])
        assert st["champions"]["default.default.ensemble"] == 1
        dashboard = stack.read_stack(tmp_path).dashboard  # the `ray job submit` target, behind Ray's token auth
        assert requests.get(f"{dashboard}/api/version", timeout=30).status_code == 401
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        assert requests.get(f"{dashboard}/api/version", headers=auth, timeout=30).status_code == 200
        # a second `up` reuses what is there
        again = _eyenet("up", "--families", "seasonal,lstm,transformer", cwd=tmp_path, env=env)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "training" not in again.stderr
        assert key_file.read_text().strip() == key  # the admin key is made once
    finally:
        record = stack.read_stack(tmp_path)
        down = _eyenet("down", cwd=tmp_path, env=env)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert record is not None and stack.cluster_processes(record.ray_address) == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert _eyenet("down", cwd=tmp_path, env=env).stdout.strip() == "nothing was running"


def test_an_up_that_fails_after_starting_ray_stops_the_cluster_it_started(tmp_path):
    """A start that fails half-way (here: the default models cannot be registered) records nothing for
    `eyenet down` to stop, so it stops the Ray cluster it started itself and says why it failed."""
    from eyenet.cli import stack

    script = """
import sys
from eyenet.cli import stack
from eyenet.core.errors import LifecycleError
started, said, real = [], [], stack.start_ray
def start_ray(say):
    got = real(say)
    started.append(got[0])
    return got
def ensure_models(registry, say):
    raise LifecycleError("default.default.ensemble version 1 rejected: for this test")
stack.start_ray, stack.ensure_models = start_ray, ensure_models
try:
    stack.up(port=int(sys.argv[1]), say=said.append)
except LifecycleError:
    print(started[0])
    print("|".join(said))
else:
    sys.exit("up did not fail")
"""
    env = {k: v for k, v in os.environ.items() if k != "EYENET_MLFLOW_URI"}
    run = subprocess.run([sys.executable, "-c", script, str(_free_port())], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    address, said = run.stdout.strip().splitlines()[-2:]
    assert "left unfinished" in said and stack.read_stack(tmp_path) is None
    assert stack.cluster_processes(address) == []
