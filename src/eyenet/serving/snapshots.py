"""Where the stream store's states persist: the rows behind :class:`eyenet.serving.streams.Streams`.

``state_uri`` names the place: a folder (the embedded default: a SQLite file ``streams.db`` in it,
for one machine) or a ``postgresql://`` / ``postgres://`` URI (a table ``eyenet_streams`` in that
database, for a cluster whose store actor may restart on any node; the password comes from
``PGPASSWORD`` or ``PGPASSFILE``, see :mod:`eyenet.lifecycle.database`).

A backend only moves rows: ``(key, version, touched, state bytes or None for a tombstone)``. It
reads them newest first, upserts a batch and deletes keys and rows older than a time in one
transaction. Everything else (versions, caps, eviction, the reload bounds, the dirty set, retries)
is the store's and the same on both. Each backend tells the store which of its errors are worth
retrying (a locked SQLite file; a PostgreSQL server unreachable, restarting or dropping the
connection) and which mean a damaged file (SQLite only: the file is moved aside).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from eyenet.core.errors import InvalidParameterError, UnavailableError
from eyenet.core.redact import redact
from eyenet.lifecycle import database
from eyenet.lifecycle.paths import home

log = logging.getLogger(__name__)

#: ``(key, version, touched, state bytes or None for a tombstone)``
Row = tuple[str, int, float, bytes | None]
FILE = "streams.db"
ENV_URI = "EYENET_STATE_URI"


def default_uri() -> str:
    """``EYENET_STATE_URI`` (a folder or a postgresql:// URI), else ``<home>/state`` (``.eyenet/state``)."""
    return os.environ.get(ENV_URI, "").strip() or str(home() / "state")


class Snapshots(Protocol):
    """What the stream store needs of its persistence."""

    #: where the rows live, for messages (credentials redacted)
    where: str
    #: the SQLite file, None on a server
    path: Path | None

    def read(self, timeout: float) -> contextlib.AbstractContextManager[tuple[int, Iterator[Row]]]:
        """``(rows in all, the rows newest first)``, open while the context lasts."""

    def write(self, rows: list[Row], gone: list[str], prune_before: float | None) -> None:
        """Upsert ``rows``, delete the ``gone`` keys and the rows touched before ``prune_before``,
        in one transaction."""

    def retryable(self, exc: BaseException) -> bool:
        """``exc`` may pass if tried again later (locked, unreachable, restarting)."""

    def damaged(self, exc: BaseException) -> bool:
        """``exc`` says the stored data cannot be read at all (then :meth:`move_aside`)."""

    def move_aside(self) -> str:
        """Keep damaged data aside for inspection and start empty; where it went."""

    def give_up(self, exc: BaseException) -> BaseException:
        """What to raise when retrying ``exc`` at start-up took too long."""

    def close(self) -> None:
        """Release connections (a later call opens them again)."""


def open_snapshots(state_uri: str | Path) -> Snapshots:
    """The backend ``state_uri`` names: a PostgreSQL URI, else a folder for ``streams.db``."""
    text = str(state_uri).strip()
    if not text:
        raise InvalidParameterError("state_uri is empty: give a folder or a postgresql:// URI")
    if database.is_postgres(text):
        return PostgresSnapshots(text)
    if database.has_scheme(text):
        raise InvalidParameterError(f"state_uri {redact(text)!r} is neither a folder nor a postgresql:// URI "
                                    f"(postgres:// is accepted too)")
    return SqliteSnapshots(Path(text))


class SqliteSnapshots:
    """``<folder>/streams.db``, opened for each read or write (WAL journal)."""

    _SCHEMA = ("CREATE TABLE IF NOT EXISTS streams (key TEXT PRIMARY KEY, version INTEGER NOT NULL, "
               "touched REAL NOT NULL, state BLOB)")
    _INDEX = "CREATE INDEX IF NOT EXISTS streams_touched ON streams (touched)"

    def __init__(self, folder: Path) -> None:
        self.path = folder / FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.where = str(self.path)

    def _connect(self, timeout: float = 30.0) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(self._SCHEMA)
            db.execute(self._INDEX)
        except BaseException:
            db.close()
            raise
        return db

    @contextlib.contextmanager
    def read(self, timeout: float) -> Iterator[tuple[int, Iterator[Row]]]:
        db = self._connect(timeout=timeout)
        try:
            total = db.execute("SELECT COUNT(*) FROM streams").fetchone()[0]
            yield total, db.execute("SELECT key, version, touched, state FROM streams ORDER BY touched DESC")
        finally:
            db.close()

    def write(self, rows: list[Row], gone: list[str], prune_before: float | None) -> None:
        db = self._connect()
        try:
            with db:
                db.executemany("INSERT INTO streams (key, version, touched, state) VALUES (?, ?, ?, ?) "
                               "ON CONFLICT(key) DO UPDATE SET version=excluded.version, "
                               "touched=excluded.touched, state=excluded.state", rows)
                db.executemany("DELETE FROM streams WHERE key = ?", [(k,) for k in gone])
                if prune_before is not None:
                    db.execute("DELETE FROM streams WHERE touched < ?", (prune_before,))
        finally:
            db.close()

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError)  # locked, busy, cannot open

    def damaged(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)

    def move_aside(self) -> str:
        aside = self.path.with_name(f"{FILE}.unreadable-{int(time.time())}")
        self.path.replace(aside)
        return str(aside)

    def give_up(self, exc: BaseException) -> BaseException:
        return exc

    def close(self) -> None:
        pass


class PostgresSnapshots:
    """Table ``eyenet_streams`` in a PostgreSQL database; one connection, kept between writes and
    opened again after an error (so the store reconnects once the server is back)."""

    TABLE = "eyenet_streams"
    _SCHEMA = [
        f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, version BIGINT NOT NULL, "
        "touched DOUBLE PRECISION NOT NULL, state BYTEA)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_touched ON {TABLE} (touched)",
    ]
    _UPSERT = (f"INSERT INTO {TABLE} (key, version, touched, state) VALUES (%s, %s, %s, %b) "
               "ON CONFLICT (key) DO UPDATE SET version = EXCLUDED.version, touched = EXCLUDED.touched, "
               "state = EXCLUDED.state")

    def __init__(self, uri: str) -> None:
        database.check_uri(uri, "state_uri")
        self.uri = uri
        self.where = redact(uri)
        self.path: Path | None = None
        self._conn: Any = None
        self._lock = threading.Lock()

    def _connection(self, timeout: float | None = None) -> Any:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self.close()
        conn = database.connect(self.uri, "state_uri", application_name="eyenet-stream-state",
                                connect_timeout=timeout)
        try:
            database.ensure_schema(conn, self.TABLE, self._SCHEMA)
            self._store_uncompressed(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _store_uncompressed(self, conn: Any) -> None:
        """States are float64 arrays, which do not compress: storing them out of line without trying
        (``STORAGE EXTERNAL``) writes a flush in less than half the time of the default."""
        with conn.transaction():
            storage = conn.execute("SELECT attstorage FROM pg_attribute WHERE attrelid = %s::regclass "
                                   "AND attname = 'state'", (self.TABLE,)).fetchone()
            if storage is not None and storage[0] != "e":
                conn.execute(f"ALTER TABLE {self.TABLE} ALTER COLUMN state SET STORAGE EXTERNAL")

    @contextlib.contextmanager
    def read(self, timeout: float) -> Iterator[tuple[int, Iterator[Row]]]:
        with self._lock:
            conn = self._connection(timeout)
            try:
                with conn.transaction():
                    total = conn.execute(f"SELECT COUNT(*) FROM {self.TABLE}").fetchone()[0]
                    with conn.cursor(name="eyenet_streams_reload") as cur:  # server-side: read as consumed
                        cur.itersize = 1000
                        cur.execute(f"SELECT key, version, touched, state FROM {self.TABLE} ORDER BY touched DESC")
                        yield total, iter(cur)
            except BaseException:
                self.close()
                raise

    def write(self, rows: list[Row], gone: list[str], prune_before: float | None) -> None:
        """One transaction. A kept connection the server dropped (a restart, an idle timeout) is
        replaced and the batch tried once more at once (the upserts are idempotent)."""
        with self._lock:
            for attempt in (1, 2):
                kept = self._conn is not None
                try:
                    conn = self._connection()
                    with conn.transaction(), conn.cursor() as cur:
                        if rows:
                            cur.executemany(self._UPSERT, rows)
                        if gone:
                            cur.execute(f"DELETE FROM {self.TABLE} WHERE key = ANY(%s)", (gone,))
                        if prune_before is not None:
                            cur.execute(f"DELETE FROM {self.TABLE} WHERE touched < %s", (prune_before,))
                    return
                except BaseException as exc:
                    self.close()  # a fresh connection next time: the server may have restarted
                    if attempt == 1 and kept and database.transient(exc):
                        log.info("stream store %s: connection lost (%s); reconnecting", self.where,
                                 database.describe(exc))
                        continue
                    raise

    def retryable(self, exc: BaseException) -> bool:
        return database.transient(exc)

    def damaged(self, exc: BaseException) -> bool:
        return False  # a server's table is never moved aside

    def move_aside(self) -> str:  # pragma: no cover - damaged() is never true
        raise NotImplementedError

    def give_up(self, exc: BaseException) -> BaseException:
        err = UnavailableError(f"stream store {self.where}: {database.describe(exc)}")
        err.__cause__ = exc
        return err

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
