"""Throwaway servers for tests and benchmarks: a real PostgreSQL and a real Prometheus from the
distribution's binaries; a free loopback port, and waiting until a served system reaches a state
(:func:`wait_until`).

Used by the ``postgres`` fixture (tests/conftest.py) and by ``bench/store_write.py``. Debian's
``postgresql`` package puts the server binaries in ``/usr/lib/postgresql/<version>/bin`` (not on
PATH); ``.ci/install-packages`` installs it without starting its own cluster.

Debian's ``prometheus`` package puts ``prometheus`` on PATH (``.ci/install-packages`` installs it;
its own service is not used): :class:`PrometheusServer` runs one with a configuration and a TSDB in
a temporary folder.

PostgreSQL refuses to run as root: when this process is root the server's commands run as the
``postgres`` system user (``runuser -u postgres --``; ``nobody`` if there is no such user) in a
temporary folder owned by that user; otherwise as this user.
"""
from __future__ import annotations

import glob
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

MISSING = "PostgreSQL server binaries not found: install Debian's postgresql"
PROMETHEUS_MISSING = "Debian's prometheus package is not installed (no prometheus on PATH; see .ci/install-packages)"


def wait_until(what: str, check: Any, timeout: float = 120.0, every: float = 0.5) -> Any:
    """``check()``'s first truthy answer, polled every ``every`` s; fails the test naming ``what``
    after ``timeout`` s."""
    deadline = time.time() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.time() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


def find_binaries() -> Path | None:
    """The folder with ``initdb``, ``pg_ctl`` and ``postgres``: on PATH, else the newest
    ``/usr/lib/postgresql/*/bin``; None when there is none."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        folder = Path(os.path.realpath(on_path)).parent
        if (folder / "initdb").exists() and (folder / "postgres").exists():
            return folder

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", Path(path).parent.name)) or (0,)

    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all((Path(folder) / b).exists() for b in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A PostgreSQL server in a temporary folder, listening on 127.0.0.1:``port`` (password logins,
    scram-sha-256) and on a socket in its folder (the superuser ``postgres``, trusted), with a login
    role ``user`` whose password is ``password``. Stoppable and restartable on the same port and data.

    ``settings`` are extra server settings (``-c name=value``).
    """

    def __init__(self, *, user: str = "eyenet", password: str = "eyenet-test-password", database: str = "eyenet",
                 settings: dict[str, Any] | None = None) -> None:
        binaries = find_binaries()
        if binaries is None:
            raise FileNotFoundError(MISSING)
        self.bin = binaries
        self.user, self.password, self.database = user, password, database
        self.settings = dict(settings or {})
        self.host = "127.0.0.1"
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="eyenet-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.run_as: str | None = None
        if os.geteuid() == 0:
            self.run_as = _system_user()
            owner = pwd.getpwnam(self.run_as)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._initialised = False

    # -- commands ----------------------------------------------------------------------------------
    def _cmd(self, program: str, *args: str) -> list[str]:
        cmd = [str(self.bin / program), *args]
        return ["runuser", "-u", self.run_as, "--", *cmd] if self.run_as else cmd

    def _run(self, program: str, *args: str, timeout: float = 120) -> None:
        out = subprocess.run(self._cmd(program, *args), cwd=self.root, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "LC_ALL": "C", "LANG": "C"})
        if out.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed ({out.returncode}): {out.stderr[-3000:]}\n{log}")

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> PostgresServer:
        """Create the cluster (first time), start the server and wait until it accepts connections."""
        if not self._initialised:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                      "--auth-host=scram-sha-256", "--no-locale", "-E", "UTF8", "--no-sync")
        options = [f"-c listen_addresses={self.host}", f"-p {self.port}", f"-k {self.root}",
                   *(f"-c {k}={v}" for k, v in self.settings.items())]
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", " ".join(options),
                  "start")
        if not self._initialised:
            self._initialised = True
            self._bootstrap()
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: clean; ``immediate``: as a crash would, recovered at the next start)."""
        if self.running():
            self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", mode, "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def cleanup(self) -> None:
        """Stop the server and delete its folder."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()

    # -- databases ---------------------------------------------------------------------------------
    def admin(self) -> Any:
        """A superuser connection over the socket (autocommit)."""
        import psycopg

        return psycopg.connect(host=str(self.root), port=self.port, user="postgres", dbname="postgres",
                               autocommit=True)

    def _bootstrap(self) -> None:
        from psycopg import sql

        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(self.user),
                                                                            sql.Literal(self.password)))
        self.create_database(self.database)

    def create_database(self, name: str) -> str:
        """A new empty database ``name`` owned by the login role (dropped first if it exists); its URI."""
        from psycopg import sql

        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(self.user)))
        return self.uri(db=name)

    def terminate(self, db: str | None = None) -> int:
        """End every client connection (to ``db``, or all); how many."""
        with self.admin() as conn:
            rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = "
                                "'client backend' AND pid <> pg_backend_pid() AND (%s::text IS NULL OR datname = %s)",
                                (db, db)).fetchall()
        return len(rows)

    def uri(self, db: str | None = None) -> str:
        """``postgresql://user@127.0.0.1:port/db``: no password (give it as ``PGPASSWORD``, :meth:`env`)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{db or self.database}"

    def env(self) -> dict[str, str]:
        """What a client's environment needs besides the URI: the password."""
        return {"PGPASSWORD": self.password}


def _system_user() -> str:
    """The unprivileged user a root process runs the server as."""
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL as")


class _ReadyServer:
    """A server binary run from a temporary folder (``root``) on 127.0.0.1:``port``, ready once
    ``/-/ready`` answers 200 (Prometheus and Alertmanager); subclasses set ``command``, ``name``."""

    name = "server"
    root: Path
    port: int
    log: Path
    command: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Any:
        """Start the server and wait until ``/-/ready`` answers 200 (again after :meth:`stop`: same port)."""
        import requests

        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.command, cwd=self.root, stdout=log, stderr=log)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self.log.read_text()[-3000:]}")
            try:
                return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        try:
            wait_until(f"{self.name} to be ready", ready, timeout=timeout, every=0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate the server and wait for it to exit."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def cleanup(self) -> None:
        """Stop the server and delete its folder."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


class PrometheusServer(_ReadyServer):
    """A Prometheus server on 127.0.0.1:``port`` with ``config`` (a dict, written as YAML) and its
    TSDB in a temporary folder. ``remote_write=True`` accepts remote_write at ``/api/v1/write``;
    ``flags`` are more command-line flags (``--query.lookback-delta=1m``)."""

    name = "prometheus"

    def __init__(self, config: dict[str, Any] | None = None, *, remote_write: bool = False,
                 flags: tuple[str, ...] = ()) -> None:
        import yaml

        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError(PROMETHEUS_MISSING)
        self.root = Path(tempfile.mkdtemp(prefix="eyenet-prometheus-"))
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(config or {"global": {"scrape_interval": "15s"}}))
        self.port = free_port()
        self.log = self.root / "server.log"
        self.command = [binary, f"--config.file={self.root / 'prometheus.yml'}",
                        f"--storage.tsdb.path={self.root / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                        *(["--web.enable-remote-write-receiver"] if remote_write else []), *flags]
        self.proc: subprocess.Popen[bytes] | None = None

    def reconfigure(self, config: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Load ``config`` into the running server (SIGHUP) and wait until it serves it; returns the
        config it had, to restore later (one server serves the session's tests)."""
        import requests
        import signal

        import yaml

        path = self.root / "prometheus.yml"
        before = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump(config))
        self.proc.send_signal(signal.SIGHUP)
        want = yaml.safe_load(yaml.safe_dump(config))

        def loaded() -> bool:
            got = requests.get(f"{self.url}/api/v1/status/config", timeout=5).json()["data"]["yaml"]
            jobs = {j["job_name"] for j in yaml.safe_load(got).get("scrape_configs") or []}
            return jobs == {j["job_name"] for j in want.get("scrape_configs") or []} and \
                len(yaml.safe_load(got).get("remote_write") or []) == len(want.get("remote_write") or [])

        wait_until("prometheus to load its new config", loaded, timeout=timeout, every=0.2)
        return before

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """The ``data.result`` of an instant query (at ``at`` Unix seconds, default now)."""
        import requests

        params = {"query": promql, **({"time": str(at)} if at is not None else {})}
        answer = requests.get(f"{self.url}/api/v1/query", params=params, timeout=30)
        answer.raise_for_status()
        return answer.json()["data"]["result"]


ALERTMANAGER_MISSING = ("Debian's prometheus-alertmanager package is not installed (no prometheus-alertmanager on PATH; "
                        "see .ci/install-packages)")


class AlertmanagerServer(_ReadyServer):
    """An Alertmanager on 127.0.0.1:``port`` (Debian's ``prometheus-alertmanager``), routing every
    alert to the webhook at ``webhook_url`` at once (no grouping wait), resolved ones included; its
    state in a temporary folder. :meth:`stop` and :meth:`start` again keep the port."""

    name = "alertmanager"

    def __init__(self, webhook_url: str) -> None:
        import yaml

        binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        if binary is None:
            raise FileNotFoundError(ALERTMANAGER_MISSING)
        self.root = Path(tempfile.mkdtemp(prefix="eyenet-alertmanager-"))
        config = {"route": {"receiver": "test", "group_by": ["..."], "group_wait": "0s", "group_interval": "1s",
                            "repeat_interval": "1h"},
                  "receivers": [{"name": "test", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}]}
        (self.root / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = self.root / "server.log"
        self.command = [binary, f"--config.file={self.root / 'alertmanager.yml'}",
                        f"--storage.path={self.root / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                        "--cluster.listen-address="]  # no gossip: one instance, no port of its own
        self.proc: subprocess.Popen[bytes] | None = None

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts it holds now (``GET /api/v2/alerts``, active and resolved within its retention)."""
        import requests

        return requests.get(f"{self.url}/api/v2/alerts", timeout=10).json()


class WebhookSink:
    """An HTTP server on 127.0.0.1 that records every POSTed JSON body with its headers; with
    ``secret`` it answers 401 to a body whose EyeNet signature does not verify (and records it
    under ``refused``)."""

    def __init__(self, secret: bytes | None = None) -> None:
        import http.server
        import threading

        from eyenet.serving.alerts import SIGNATURE, TIMESTAMP, verify

        self.received: list[dict[str, Any]] = []
        self.refused: list[bytes] = []
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if secret is not None and not verify(secret, body, self.headers.get(TIMESTAMP),
                                                     self.headers.get(SIGNATURE)):
                    sink.refused.append(body)
                    self.send_response(401)
                else:
                    sink.received.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
