"""The audit log of the model lifecycle: who trained, registered, gated, promoted or rolled back what, when and why.

Every event is one JSON line appended to ``audit.jsonl`` (beside the embedded
MLflow store, i.e. ``.eyenet/audit.jsonl``; ``EYENET_AUDIT_PATH`` puts it
elsewhere, e.g. on storage shared by the cluster; a process that keeps its own log
gives its :class:`~eyenet.lifecycle.registry.Registry` an ``audit_log``). Appends hold an exclusive
``fcntl`` lock and are fsynced, so concurrent writers never interleave and an
event that was reported written survives a crash. A line torn by a crash in
mid-write is skipped when reading, and the next append starts on a fresh line
so it cannot glue itself to the torn one.

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
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eyenet.core.errors import AuditError, InvalidParameterError
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

ENV_PATH = "EYENET_AUDIT_PATH"
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


def default_path(registry_uri: str | None = None) -> Path:
    """``EYENET_AUDIT_PATH``; else beside an embedded (SQLite) store; else ``.eyenet/audit.jsonl`` here."""
    if os.environ.get(ENV_PATH):
        return Path(os.environ[ENV_PATH]).absolute()
    if registry_uri and registry_uri.startswith("sqlite:///"):
        return Path(registry_uri[len("sqlite:///") :]).absolute().parent / FILE
    return home() / FILE


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
    """The append-only JSON-lines file at ``path`` (default :func:`default_path`)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()

    @contextlib.contextmanager
    def _locked(self, mode: str, lock: int) -> Iterator[Any]:
        with open(self.path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            fcntl.flock(f.fileno(), lock)
            try:
                yield f
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def append(self, event: Event) -> Event:
        """Write one event durably (locked, flushed, fsynced)."""
        if event.event not in EVENTS:
            raise InvalidParameterError(f"audit event {event.event!r} is not one of {', '.join(EVENTS)}")
        line = json.dumps(event.to_dict(), sort_keys=True, allow_nan=False)
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
        return event

    def read(self, name: str | None = None, limit: int | None = None) -> list[Event]:
        """Events in the order they were written (of ``name`` only, when given; the last ``limit``)."""
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


def for_registry(registry: Any) -> AuditLog:
    """``registry``'s audit log: the one it was given (its ``audit_log``), else the one that belongs
    with its store."""
    given = getattr(registry, "audit_log", None)
    return given if given is not None else AuditLog(default_path(registry.uri))


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

    The file is written first: it is the record; the tags are a view of it.
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
            path: str | Path | None = None) -> list[Event]:
    """Audit events in order: of one model or all, from ``path``, ``registry``'s log, or the default log."""
    if path is not None:
        return AuditLog(path).read(name, limit)
    return (for_registry(registry) if registry is not None else AuditLog()).read(name, limit)
