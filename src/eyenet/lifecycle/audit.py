"""The audit log of the model lifecycle: who trained, registered, gated, promoted or rolled back what, when and why.

The log's place is a URI (``EYENET_AUDIT_URI``, or the controller's ``audit_uri``; a process that
keeps its own log gives its :class:`~eyenet.lifecycle.registry.Registry` an ``audit_log``):

- a file path (the default: ``audit.jsonl`` beside the embedded MLflow store, i.e.
  ``.eyenet/audit.jsonl``): every event is one JSON line. Appends hold an exclusive ``fcntl`` lock
  and are fsynced, so concurrent writers never interleave and an event that was reported written
  survives a crash. A line torn by a crash in mid-write is skipped when reading, and the next
  append starts on a fresh line so it cannot glue itself to the torn one.
- a ``postgresql://`` (or ``postgres://``) URI: one row per event in the table ``eyenet_audit`` of
  that database (created on first use, indexed by model), for a cluster whose controller and
  retraining tasks run on any node. Each append is its own committed transaction, so it is durable
  when the call returns (an INTENT is stored before the alias moves); events read back in the
  order they were stored. The password comes from ``PGPASSWORD`` / ``PGPASSFILE``, never the URI
  (see :mod:`eyenet.lifecycle.database`).

Both give the same events back from :meth:`AuditLog.read`.

The latest event of a version is mirrored on its MLflow model-version tags
(``eyenet.status``, ``eyenet.event``, ``eyenet.reason``, ``eyenet.actor``,
``eyenet.event_time``) so that the registry UI and every process that reads the
registry see where a version stands.
"""
from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import logging
import math
import numbers
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eyenet.core.errors import AuditError, InvalidParameterError
from eyenet.core.redact import redact
from eyenet.lifecycle import database
from eyenet.lifecycle.paths import home

TRAIN = "TRAIN"
REGISTER = "REGISTER"
GATE_PASS = "GATE-PASS"
REJECT = "REJECT"
PROMOTE = "PROMOTE"
ROLLBACK = "ROLLBACK"
#: the controller reports a version serving on every replica (or refusing to serve it: REJECT)
SERVE = "SERVE"
#: the controller starts retraining a served model (drift, poor precision, schedule), with the reason
RETRAIN = "RETRAIN"
#: written before an alias moves (what is about to happen and who asked); PROMOTE / ROLLBACK follow
INTENT = "INTENT"
#: an operator's labels on scored points (the counts in the metrics)
FEEDBACK = "FEEDBACK"
#: API keys created and revoked (name: ``key:<name>``; no version)
KEY_CREATE = "KEY-CREATE"
KEY_REVOKE = "KEY-REVOKE"
EVENTS: tuple[str, ...] = (TRAIN, REGISTER, GATE_PASS, REJECT, PROMOTE, ROLLBACK, SERVE, RETRAIN, INTENT, FEEDBACK,
                           KEY_CREATE, KEY_REVOKE)

#: where a version stands, mirrored as its ``eyenet.status`` tag
REGISTERED = "registered"
PASSED = "passed"
ARCHIVED = "archived"  # rejected by the gate: never serves
PROMOTED = "promoted"  # serves, or served and was not withdrawn
ROLLED_BACK = "rolled-back"  # was champion, withdrawn by a rollback

ENV_URI = "EYENET_AUDIT_URI"
FILE = "audit.jsonl"
TAG = "eyenet."
#: MLflow caps tag values; reasons longer than this are cut in the tag (the log keeps them whole)
_TAG_CHARS = 5000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """One audit record. ``previous`` is the champion before a PROMOTE or ROLLBACK."""

    event: str
    name: str
    version: int | None
    reason: str
    actor: str
    time: float  # unix seconds, UTC
    metrics: dict[str, float | None] = field(default_factory=dict)
    previous: int | None = None

    @property
    def iso(self) -> str:
        return datetime.fromtimestamp(self.time, tz=UTC).isoformat(timespec="milliseconds")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "iso": self.iso}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        return cls(
            event=str(d["event"]),
            name=str(d["name"]),
            version=None if d.get("version") is None else int(d["version"]),
            reason=str(d.get("reason", "")),
            actor=str(d.get("actor", "")),
            time=float(d["time"]),
            metrics=dict(d.get("metrics") or {}),
            previous=None if d.get("previous") is None else int(d["previous"]),
        )


def default_actor() -> str:
    """``user@host`` of this process: who a command-line action is attributed to."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def default_uri(registry_uri: str | None = None) -> str:
    """``EYENET_AUDIT_URI`` (a file path or a postgresql:// URI); else the file beside an embedded
    (SQLite) store; else ``.eyenet/audit.jsonl`` here."""
    given = os.environ.get(ENV_URI, "").strip()
    if given:
        return given if database.has_scheme(given) else str(Path(given).absolute())
    if registry_uri and registry_uri.startswith("sqlite:///"):
        return str(Path(registry_uri[len("sqlite:///") :]).absolute().parent / FILE)
    return str(home() / FILE)


def _clean_metrics(metrics: dict[str, Any] | None) -> dict[str, float | None]:
    """Numbers as floats, non-finite ones as null (JSON has no NaN); other values dropped."""
    out: dict[str, float | None] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            continue
        f = float(v)
        out[str(k)] = f if math.isfinite(f) else None
    return out


class AuditLog:
    """The audit log at ``uri`` (default :func:`default_uri`): a JSON-lines file, or a table in the
    PostgreSQL database a ``postgresql://`` URI names. The same events either way."""

    def __init__(self, uri: str | Path | None = None) -> None:
        target = str(uri).strip() if uri is not None else default_uri()
        if not target:
            raise InvalidParameterError("audit_uri is empty: give a file path or a postgresql:// URI")
        if database.is_postgres(target):
            self.backend: JsonLines | PostgresEvents = PostgresEvents(target)
        elif database.has_scheme(target):
            raise InvalidParameterError(f"audit_uri {redact(target)!r} is neither a file path nor a postgresql:// URI "
                                        f"(postgres:// is accepted too)")
        else:
            self.backend = JsonLines(Path(target))

    @property
    def path(self) -> Path | None:
        """The JSON-lines file (None when the log is in PostgreSQL)."""
        return getattr(self.backend, "path", None)

    @property
    def where(self) -> str:
        """Where the log is, for messages (credentials redacted)."""
        return self.backend.where

    def append(self, event: Event) -> Event:
        """Write one event durably (the file: locked, flushed, fsynced; PostgreSQL: committed)."""
        if event.event not in EVENTS:
            raise InvalidParameterError(f"audit event {event.event!r} is not one of {', '.join(EVENTS)}")
        line = json.dumps(event.to_dict(), sort_keys=True, allow_nan=False)
        self.backend.append(event, line)
        return event

    def read(self, name: str | None = None, limit: int | None = None) -> list[Event]:
        """Events in the order they were written (of ``name`` only, when given; the last ``limit``)."""
        return self.backend.read(name, limit)

    def close(self) -> None:
        """Release a server connection (a later call opens one again)."""
        self.backend.close()


class JsonLines:
    """The append-only JSON-lines file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    @contextlib.contextmanager
    def _locked(self, mode: str, lock: int) -> Iterator[Any]:
        with open(self.path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            fcntl.flock(f.fileno(), lock)
            try:
                yield f
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def append(self, event: Event, line: str) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked("a+b", fcntl.LOCK_EX) as f:
                f.seek(0, os.SEEK_END)
                torn = False
                if f.tell() > 0:  # a crash may have left a last line without its newline
                    f.seek(-1, os.SEEK_END)
                    torn = f.read(1) != b"\n"
                f.write((b"\n" if torn else b"") + line.encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise AuditError(f"audit log {self.path}: {exc.strerror or exc}") from None

    def read(self, name: str | None, limit: int | None) -> list[Event]:
        if not self.path.exists():
            return []
        try:
            with self._locked("r", fcntl.LOCK_SH) as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise AuditError(f"audit log {self.path}: {exc.strerror or exc}") from None
        out: list[Event] = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                ev = Event.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError):
                log.warning("%s:%d: skipping an unreadable audit line (torn by a crash?)", self.path, n)
                continue
            if name is None or ev.name == name:
                out.append(ev)
        return out[-limit:] if limit else out

    def close(self) -> None:
        pass


class PostgresEvents:
    """Table ``eyenet_audit`` in a PostgreSQL database: one row per event, in insertion order (``id``),
    indexed by model. One connection per log, opened on first use and again after an error; an
    append on a connection the server dropped (a restart) is tried once more on a new one."""

    TABLE = "eyenet_audit"
    _SCHEMA = [
        f"CREATE TABLE IF NOT EXISTS {TABLE} (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "time DOUBLE PRECISION NOT NULL, event TEXT NOT NULL, name TEXT NOT NULL, version BIGINT, "
        "previous BIGINT, actor TEXT NOT NULL, reason TEXT NOT NULL, metrics JSONB NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_name ON {TABLE} (name, id)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_time ON {TABLE} (time)",
    ]
    _COLUMNS = "event, name, version, reason, actor, time, metrics, previous"

    def __init__(self, uri: str) -> None:
        database.check_uri(uri, "audit_uri")
        self.uri = uri
        self.where = redact(uri)
        self._conn: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # a Registry holding this log may be sent to a Ray task
        return {"uri": self.uri, "where": self.where}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"])

    def _connection(self) -> tuple[Any, bool]:
        """The connection, and whether it was opened just now."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn, False
        self.close()
        conn = database.connect(self.uri, "audit_uri", autocommit=True, application_name="eyenet-audit")
        try:
            database.ensure_schema(conn, self.TABLE, self._SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn, True

    def _run(self, work: Any) -> Any:
        """``work(connection)`` under the lock; once more on a new connection when a kept one turns
        out dead; psycopg's errors as :class:`~eyenet.core.errors.AuditError`."""
        with self._lock:
            for attempt in (1, 2):
                fresh = True
                try:
                    conn, fresh = self._connection()
                    return work(conn)
                except Exception as exc:
                    if not database.is_error(exc):
                        raise
                    self.close()
                    if attempt == 1 and not fresh and database.transient(exc):
                        log.info("audit log %s: connection lost (%s); reconnecting", self.where, database.describe(exc))
                        continue
                    raise AuditError(f"audit log {self.where}: {database.describe(exc)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def append(self, event: Event, line: str) -> None:
        from psycopg.types.json import Jsonb

        row = (event.event, event.name, event.version, event.reason, event.actor, event.time, Jsonb(event.metrics),
               event.previous)
        self._run(lambda conn: conn.execute(
            f"INSERT INTO {self.TABLE} ({self._COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", row))

    def read(self, name: str | None, limit: int | None) -> list[Event]:
        where, params = ("WHERE name = %s", [name]) if name is not None else ("", [])
        if limit:
            sql = f"SELECT {self._COLUMNS} FROM {self.TABLE} {where} ORDER BY id DESC LIMIT %s"
            params.append(int(limit))
        else:
            sql = f"SELECT {self._COLUMNS} FROM {self.TABLE} {where} ORDER BY id"
        rows = self._run(lambda conn: conn.execute(sql, params).fetchall())
        if limit:
            rows.reverse()
        return [Event(event=e, name=n, version=v, reason=r, actor=a, time=float(t), metrics=dict(mx or {}),
                      previous=p) for e, n, v, r, a, t, mx, p in rows]

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


#: the logs :func:`for_registry` opened on a server, kept for their connection (uri -> log)
_SERVER_LOGS: dict[str, AuditLog] = {}
_SERVER_LOGS_LOCK = threading.Lock()


def for_registry(registry: Any) -> AuditLog:
    """``registry``'s audit log: the one it was given (its ``audit_log``), else the one that belongs
    with its store."""
    given = getattr(registry, "audit_log", None)
    return given if given is not None else _open(default_uri(registry.uri))


def _open(uri: str) -> AuditLog:
    """The log at ``uri``; one per server URI in this process, so its connection is kept."""
    if not database.is_postgres(uri):
        return AuditLog(uri)
    with _SERVER_LOGS_LOCK:
        if uri not in _SERVER_LOGS:
            _SERVER_LOGS[uri] = AuditLog(uri)
        return _SERVER_LOGS[uri]


def record(
    registry: Any,
    event: str,
    name: str,
    version: int | None,
    *,
    reason: str,
    actor: str | None = None,
    metrics: dict[str, Any] | None = None,
    previous: int | None = None,
    status: str | None = None,
    mirror: bool = True,
) -> Event:
    """Append an event to ``registry``'s audit log and mirror it on the version's MLflow tags.

    The log is written first: it is the record; the tags are a view of it.
    """
    ev = Event(event=event, name=name, version=version, reason=reason, actor=actor or default_actor(),
               time=time.time(), metrics=_clean_metrics(metrics), previous=previous)
    for_registry(registry).append(ev)
    if mirror and version is not None:
        tags = {"event": event, "reason": reason, "actor": ev.actor, "event_time": ev.iso}
        if status is not None:
            tags["status"] = status
        set_tags(registry, name, version, tags)
    return ev


def set_tags(registry: Any, name: str, version: int, tags: dict[str, str]) -> None:
    """Set ``eyenet.<key>`` tags on a model version (values cut to what MLflow stores)."""
    registry.set_tags(name, version, {TAG + k: str(v)[:_TAG_CHARS] for k, v in tags.items()})


def history(name: str | None = None, limit: int | None = None, *, registry: Any = None,
            uri: str | Path | None = None) -> list[Event]:
    """Audit events in order: of one model or all, from ``uri`` (a file path or a postgresql:// URI),
    ``registry``'s log, or the default log."""
    if uri is not None:
        return _open(str(uri)).read(name, limit)
    return (for_registry(registry) if registry is not None else _open(default_uri())).read(name, limit)
