"""The running system on one machine: a local Ray cluster, the embedded MLflow store, the Serve app.

``up`` starts a Ray head in the background (``ray start --head``), trains and
registers default models when the registry has none, deploys the app and
returns with everything running; what it started is written to
``.eyenet/up.json`` so that ``status`` finds it and ``down`` stops exactly it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from eyenet.cli.cluster import QUIET_ENV, SERVE_ENV, ClusterError
from eyenet.core.errors import EyenetError, InvalidParameterError
from eyenet.core.redact import redact, redact_all
from eyenet.lifecycle import registry as reg

# token authentication for the cluster `up` starts and every client of it (the token is in
# ~/.ray/auth_token); Ray reads this when it is imported, so it is set before that
os.environ.setdefault("RAY_AUTH_MODE", "token")
for _k, _v in {**QUIET_ENV, **SERVE_ENV}.items():
    os.environ.setdefault(_k, _v)

PORT_ENV = "EYENET_PORT"
HOST_ENV = "EYENET_HOST"
APP = "eyenet"
#: what `up` trains when the registry holds no champion: the ensemble and a forecaster for /v1/forecast
DEFAULT_MODELS = ("ensemble", "transformer")

Say = Callable[[str], None]


@dataclass
class Stack:
    """What ``up`` started."""

    ray_address: str
    port: int
    host: str
    mlflow_uri: str
    started_ray: bool
    started: float
    dashboard: str = ""  # Ray dashboard and job API (`ray job submit --address ...`)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"


def _record(root: Path | None = None) -> Path:
    return reg.home(root) / "up.json"


def read_stack(root: Path | None = None) -> Stack | None:
    try:
        return Stack(**json.loads(_record(root).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _ray_bin() -> str:
    found = Path(sys.executable).with_name("ray")
    return str(found) if found.exists() else (shutil.which("ray") or "ray")


def start_ray(say: Say) -> tuple[str, bool, str]:
    """A Ray head in the background; returns its address, whether ``up`` started it, and the
    dashboard URL (reusing the cluster an earlier ``up`` started)."""
    import ray

    old = read_stack()
    if old and old.started_ray:
        try:
            ray.init(address=old.ray_address, logging_level="WARNING")
            return old.ray_address, True, old.dashboard
        except Exception:  # noqa: BLE001 - gone: start a new one
            pass
    port, dash = _free_port(), _free_port()
    cpus = max(4, 2 * (os.cpu_count() or 1))  # deployments take fractions of a CPU
    cmd = [_ray_bin(), "start", "--head", f"--port={port}", f"--num-cpus={cpus}", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats"]
    say(f"starting Ray (head on 127.0.0.1:{port}, {cpus} logical CPUs)")
    if os.environ.get("RAY_AUTH_MODE") == "token":  # `ray start` does not create the token itself
        subprocess.run([_ray_bin(), "get-auth-token", "--generate"], capture_output=True, text=True, timeout=60)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=os.environ.copy())
    if res.returncode != 0:
        last = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ClusterError(f"'ray start' failed: {last[0][:300]}")
    address = f"127.0.0.1:{port}"
    ray.init(address=address, logging_level="WARNING")
    return address, True, f"http://127.0.0.1:{dash}"


def ensure_models(registry: reg.Registry, say: Say, *, group: str = "default", tenant: str = "default") -> dict[str, int]:
    """Champion versions of the default models, training and registering them when missing."""
    from eyenet.core import presets, synthetic
    from eyenet.core.data import Series
    from eyenet.lifecycle import holdout, promotion, training

    out = {}
    for family in DEFAULT_MODELS:
        name = reg.model_name(family, group=group, tenant=tenant)
        try:
            out[family] = registry.version(name, alias=reg.CHAMPION).version
            continue
        except EyenetError:
            pass
        n = presets.UP_ROWS
        ts, values, _ = synthetic.series("cpu_pct", n=n, seed=presets.UP_SEED)
        head = np.asarray(values[: int(n * presets.UP_TRAIN_FRACTION)])  # the anomaly-free start
        say(f"training {family} on synthetic cpu_pct ({len(head)} rows) and registering it as {name}")
        info = training.data_info(Series("cpu-pct", ts[: len(head)], head), holdout.synthetic_source("cpu_pct"))
        result = training.train_and_register(presets.model_config(family), head, registry=registry,
                                             group=group, tenant=tenant, data=info)
        # gated like any promotion: with no champion to beat, the version must load, give finite,
        # sane scores on its held-out data and meet the latency budget
        promotion.promote(registry, name, result.version.version, reason="first champion, by eyenet up")
        out[family] = result.version.version
    return out


ADMIN_KEY = "admin.key"


def admin_key_path() -> Path:
    return reg.home() / ADMIN_KEY


def admin_key(say: Say = print, uri: str | None = None) -> str:
    """The key store of this folder's app (``uri``, else EYENET_KEYS_URI, else ``.eyenet/keys.db``),
    with an admin key in ``.eyenet/admin.key`` (mode 0600) created on first start; returns its URI."""
    from eyenet.cli.keys import audit_key
    from eyenet.lifecycle import audit
    from eyenet.serving.auth import KeyStore, default_keys_uri

    path = uri or default_keys_uri(reg.home())
    store = KeyStore(path)
    key_file = admin_key_path()
    if not key_file.exists():
        rec, key = store.create(f"admin-{int(time.time())}", "default", "admin")
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        audit_key(audit.KEY_CREATE, rec.name, "the admin key of eyenet up")
        say(f"created an admin API key in {key_file} (mode 0600); send it as "
            f"'Authorization: Bearer $(cat {key_file})'; more keys: eyenet keys create --tenant T --role R")
    return path


def read_settings(path: str | None) -> dict[str, Any]:
    """App settings from a YAML or JSON file (``eyenet up --config``), checked against the app config;
    an :class:`InvalidParameterError` naming the file and the first problem."""
    import yaml
    from pydantic import ValidationError

    from eyenet.serving.settings import AppConfig

    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InvalidParameterError(f"--config {path}: cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise InvalidParameterError(f"--config {path}: not YAML or JSON ({str(exc).splitlines()[0]})") from None
    data = data or {}
    if not isinstance(data, dict):
        raise InvalidParameterError(f"--config {path}: expected a mapping of app settings, got {type(data).__name__}")
    try:
        AppConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise InvalidParameterError(f"--config {path}: {where}: {err['msg']}") from None
    return data


def up(*, port: int | None = None, host: str | None = None, families: list[str] | None = None,
       settings: dict[str, Any] | None = None, say: Say = print) -> Stack:
    """Bring everything up and return; idempotent (an existing app is redeployed in place).
    ``settings``: app config fields over the defaults (:func:`read_settings`)."""
    from ray import serve

    from eyenet.serve.app import build_app
    from eyenet.serving.settings import AppConfig
    from eyenet.serving.snapshots import default_uri as default_state_uri

    port = int(port or os.environ.get(PORT_ENV) or 8000)
    host = host or os.environ.get(HOST_ENV) or "127.0.0.1"
    registry = reg.Registry().check()
    say(f"MLflow: {redact(registry.uri)}")
    old = read_stack()
    if not (old and old.port == port) and not _port_free(host, port):
        raise ClusterError(f"port {port} on {host} is in use; set {PORT_ENV} to another port")
    address, started, dashboard = start_ray(say)
    new = not (old and old.started_ray and old.ray_address == address)
    try:
        versions = ensure_models(registry, say)
        say(f"deploying the app on {host}:{port}")
        serve.start(http_options={"host": host, "port": port})
        settings = dict(settings or {})
        keys_uri = admin_key(say, settings.get("auth", {}).get("keys_uri"))
        config = AppConfig(**{"mlflow_uri": registry.uri, "state_uri": default_state_uri(),
                              **({"families": families} if families else {}), **settings,
                              "auth": {"keys_uri": keys_uri, **settings.get("auth", {})}})
        serve.run(build_app(config), name=APP, route_prefix="/")
    except BaseException:
        if new:  # nothing records a cluster this call started, so `eyenet down` could not stop it: stop it now
            import ray

            ray.shutdown()
            say(f"stopping the Ray cluster at {address}, which this start left unfinished")
            stop_cluster(address)
        raise
    stack = Stack(address, port, host, registry.uri, started, time.time(), dashboard)
    _record().parent.mkdir(parents=True, exist_ok=True)
    _record().write_text(json.dumps(asdict(stack), indent=2))
    say(f"champion versions: {versions}")
    return stack


def connect_existing() -> Stack:
    import ray

    stack = read_stack()
    if stack is None:
        raise ClusterError("nothing is running here (no .eyenet/up.json); start it with 'eyenet up'")
    try:
        ray.init(address=stack.ray_address, logging_level="WARNING")
    except Exception as exc:  # noqa: BLE001
        raise ClusterError(f"the Ray cluster at {stack.ray_address} is not reachable ({str(exc).splitlines()[0][:200]})") from None
    return stack


def status() -> dict[str, Any]:
    """Deployments with their replica counts and states, and the served model versions."""
    from ray import serve

    stack = connect_existing()
    st = serve.status()
    app = st.applications.get(APP)
    deployments = {}
    if app is not None:
        for name, d in app.deployments.items():
            deployments[name] = {"status": str(d.status.value if hasattr(d.status, "value") else d.status),
                                 "replicas": {str(k.value if hasattr(k, "value") else k): v
                                              for k, v in (d.replica_states or {}).items()}}
    registry = reg.Registry(stack.mlflow_uri)
    served = {}
    for family in DEFAULT_MODELS:
        name = reg.model_name(family)
        try:
            served[name] = registry.version(name, alias=reg.CHAMPION).version
        except EyenetError as exc:
            served[name] = f"unavailable ({redact(exc)})"
    return {"url": stack.url, "ray": stack.ray_address,
            "app": str(app.status.value if app is not None and hasattr(app.status, "value") else (app.status if app else "NOT RUNNING")),
            "deployments": deployments, "champions": served, "controller": redact_all(controller_status())}


def controller_status(timeout: float = 10.0) -> dict[str, Any]:
    """What the app's model controller reports (serving table, registry health, last switches)."""
    import ray

    from eyenet.serve.actors import find_controller

    ctl = find_controller(APP)
    if ctl is None:
        return {"error": "no model controller is running"}
    try:
        return ray.get(ctl.status.remote(), timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - restarting, or gone
        return {"error": f"the model controller does not answer ({type(exc).__name__})"}


def down(say: Say = print) -> bool:
    """Stop the app and the Ray cluster ``up`` started; returns whether anything was running."""
    stack = read_stack()
    if stack is None:
        return False
    try:
        import ray
        from ray import serve

        from eyenet.serve.actors import find_controller

        ray.init(address=stack.ray_address, logging_level="WARNING")
        serve.shutdown()
        from eyenet.serve.actors import find_monitor, flush_store

        try:  # the routers are gone: write the stream states the store holds unwritten before Ray stops
            flush_store(timeout_s=10)
        except Exception as exc:  # noqa: BLE001 - say so, and stop anyway
            say(f"stream store: the last states were not written ({type(exc).__name__}: {exc})")

        for actor in (find_controller(APP), find_monitor(APP)):
            if actor is not None:  # detached: it would outlive the app on a cluster up did not start
                ray.kill(actor, no_restart=True)
        ray.shutdown()
    except Exception:  # noqa: BLE001 - already gone: still stop the processes below
        pass
    if stack.started_ray:
        say(f"stopping the Ray cluster at {stack.ray_address}")
        stop_cluster(stack.ray_address)
    _record().unlink(missing_ok=True)
    return True


def cluster_processes(address: str) -> list[Any]:
    """The processes of the Ray cluster at ``address`` only (not other Ray clusters on this machine):
    its GCS server, the processes pointed at its port (under any of the node's addresses: Ray
    names the node by its IP, ``up`` records loopback), every process of its session directory,
    and all their descendants (workers, replicas, agents, HAProxy)."""
    import psutil

    port = address.rsplit(":", 1)[-1]
    pointed = re.compile(rf"--(?:gcs[-_]address|address|gcs_server_port)=(?:\S*:)?{port}(?:\s|$)")
    session = re.compile(r"--(?:session[-_]dir)=(\S+)")
    procs = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        procs.append((p, " ".join(p.info.get("cmdline") or [])))
    roots = [p for p, cmd in procs if pointed.search(cmd)]
    dirs = {m.group(1) for p, cmd in procs if p in roots for m in [session.search(cmd)] if m}
    roots += [p for p, cmd in procs if p not in roots and any(d in cmd for d in dirs)]
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            for c in p.children(recursive=True):
                found[c.pid] = c
        except psutil.Error:
            pass
    return [p for pid, p in found.items() if pid != os.getpid()]


def stop_cluster(address: str, timeout: float = 20.0) -> int:
    """Terminate (then kill) every process of the cluster at ``address``; returns how many there were."""
    import psutil

    procs = cluster_processes(address)
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    _forget_address(address)
    return len(procs)


def _forget_address(address: str) -> None:
    """Ray remembers the last cluster `ray start` made (so `ray.init()` joins it); forget a stopped one."""
    import tempfile

    port = address.rsplit(":", 1)[-1]
    for root in {Path(tempfile.gettempdir()) / "ray", Path("/tmp/ray")}:
        f = root / "ray_current_cluster"
        try:
            if f.read_text().strip().rsplit(":", 1)[-1] == port:
                f.unlink()
        except OSError:
            pass
