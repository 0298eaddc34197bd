"""PostgreSQL connections for the stores that may live in a server (the audit log, the stream state).

A store's setting names either a local file or folder (the embedded default) or a
``postgresql://`` (or ``postgres://``) URI. Passwords do not belong in the URI, which sits in
committed config: libpq reads ``PGPASSWORD``, ``PGPASSFILE`` (``~/.pgpass`` by default),
``PGSSLMODE``, ``PGSSLROOTCERT`` and the other ``PG*`` variables from the environment, so
``postgresql://eyenet@db:5432/eyenet`` plus ``PGPASSWORD`` in the process's environment is
enough. A URI that does hold a password is shown redacted (:func:`eyenet.core.redact.redact`)
wherever it appears.

psycopg is imported on first use: the embedded stores never load it.
"""
from __future__ import annotations

import os
from typing import Any

from eyenet.core.errors import InvalidParameterError
from eyenet.core.redact import redact

SCHEMES = ("postgresql", "postgres")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
#: seconds a connection attempt may take unless the URI says otherwise (``connect_timeout``)
CONNECT_TIMEOUT_S = 5


def is_postgres(uri: object) -> bool:
    """Whether ``uri`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    text = str(uri).strip()
    return any(text.lower().startswith(f"{s}://") for s in SCHEMES)


def has_scheme(uri: object) -> bool:
    """Whether ``uri`` looks like ``scheme://...`` rather than a file path."""
    text = str(uri)
    head, sep, _ = text.partition("://")
    return bool(sep) and head.replace("+", "").replace("-", "").replace(".", "").isalnum()


def check_uri(uri: str, what: str) -> dict[str, Any]:
    """The connection parameters of a PostgreSQL ``uri`` (``what`` names the setting in the error);
    an :class:`~eyenet.core.errors.InvalidParameterError` naming the problem when it is not one."""
    from psycopg import conninfo
    from psycopg.errors import ProgrammingError

    if not is_postgres(uri):
        raise InvalidParameterError(f"{what} {redact(uri)!r} is not a postgresql:// URI")
    try:
        params = conninfo.conninfo_to_dict(uri)
    except ProgrammingError as exc:
        raise InvalidParameterError(f"{what} {redact(uri)!r} is not a valid PostgreSQL URI: "
                                    f"{redact(str(exc).strip())}") from None
    port = params.get("port")
    if port is not None and not all(p.isdigit() and 0 < int(p) < 65536 for p in str(port).split(",")):
        raise InvalidParameterError(f"{what} {redact(uri)!r}: port {port!r} is not a port number")
    mode = params.get("sslmode")
    if mode is not None and mode not in SSLMODES:
        raise InvalidParameterError(f"{what} {redact(uri)!r}: sslmode {mode!r} is not one of {', '.join(SSLMODES)}")
    return params


def connect(uri: str, what: str, *, autocommit: bool = False, application_name: str = "eyenet",
            connect_timeout: float | None = None) -> Any:
    """A psycopg connection to ``uri`` (checked as :func:`check_uri` does). ``connect_timeout``
    (seconds, at least 2: libpq's floor; default :data:`CONNECT_TIMEOUT_S`) and ``application_name``
    are set unless the URI sets them; the password, TLS and the rest come from the URI or the
    ``PG*`` environment. Raises psycopg's ``OperationalError`` when the server cannot be reached
    (see :func:`transient`)."""
    import psycopg

    params = check_uri(uri, what)
    extra: dict[str, Any] = {}
    if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
        extra["connect_timeout"] = max(2, round(connect_timeout or CONNECT_TIMEOUT_S))
    if "application_name" not in params:
        extra["application_name"] = application_name
    return psycopg.connect(uri, autocommit=autocommit, **extra)


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth retrying later: the server is unreachable, restarting, shutting down
    or dropped the connection (psycopg's ``OperationalError`` and ``InterfaceError``)."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - a hard dependency
        return False
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


def is_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from psycopg (the server, the connection or a query)."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - a hard dependency
        return False
    return isinstance(exc, psycopg.Error)


def describe(exc: BaseException) -> str:
    """``exc`` as one line, credentials redacted."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact(text)


def ensure_schema(conn: Any, name: str, statements: list[str]) -> None:
    """Run ``statements`` (``CREATE ... IF NOT EXISTS``) in one transaction under an advisory lock
    on ``name``, so processes starting together do not race to create the same table."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"eyenet:{name}",))
        for sql in statements:
            cur.execute(sql)
