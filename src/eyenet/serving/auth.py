"""Who may do what: a credential (an API key or an OIDC bearer token) becomes an :class:`Identity`
(name, tenant, role); the route policy says which role each route needs; an ASGI middleware
enforces both before a request reaches a route.

- **Roles** are ordered, each including the ones before it: ``reader`` (GET routes),
  ``writer`` (detect, stream, forecast, feedback), ``operator`` (promote, rollback, review),
  ``admin`` (keys, and every tenant).
- **Tenants** come from the credential. A request naming another tenant is refused (403) unless
  the caller is an admin; models (``<tenant>.<group>.<family>``), streams, feedback and history
  are the caller's tenant's only.
- **API keys** look like ``eyn_<id>_<secret>``; the store keeps the id, the key's name, tenant,
  role, when it was created and last used, whether it was revoked, and a scrypt hash of the
  secret (never the secret). Verifying a hash costs tens of milliseconds on purpose, so a
  verified key is remembered in memory for ``cache_s`` seconds (keyed by a SHA-256 digest of the
  key): a request then costs a dictionary look-up, and a revoked key stops working within
  ``cache_s``. A key still in use past half its ``cache_s`` is checked again in the background
  (refresh ahead), so its requests never wait for a hash once it was first verified; that check,
  and any later one of the same key, looks its revocation up without hashing again (the process
  remembers which stored hash the key matched: one hash per key per process). Concurrent
  requests with the same unverified credential share one check, at most ``SLOW_CHECKS`` checks
  run at once per process, and a refused credential is remembered as
  refused for ``cache_s`` too, so neither an expired cache under load nor a client repeating a bad
  key costs a hash per request.
- **OIDC tokens** (JWTs) are verified with PyJWT against the issuer's JWKS, with the issuer and
  audience checked; claims name the tenant and role.

With ``auth.enabled`` false (an explicit setting only) every request acts as an admin of the
tenant it names, and ``/healthz`` says so.
"""
from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from eyenet.core.errors import (
    AuthenticationError,
    InvalidParameterError,
    PermissionDeniedError,
    UnavailableError,
    UnknownNameError,
)

ROLES: tuple[str, ...] = ("reader", "writer", "operator", "admin")
KEY_PREFIX = "eyn_"
_KEY = re.compile(r"eyn_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,63}")
_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # a model-name part (eyenet.lifecycle.registry)
#: scrypt cost: 16 MiB and ~30-60 ms per hash here; paid once per key per ``cache_s``
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


# ----------------------------------------------------------------------------------------------
# identities and settings


@dataclass(frozen=True)
class Identity:
    """Who is calling: ``name`` (recorded as the actor in the audit log), ``tenant`` and ``role``."""

    name: str
    tenant: str
    role: str

    def allows(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def sees(self, tenant: str) -> bool:
        """Whether this identity may read or change ``tenant``'s models, streams and history."""
        return self.is_admin or tenant == self.tenant

    def tenant_for(self, requested: str | None) -> str:
        """The tenant a request acts for: the credential's; another one only for an admin."""
        if requested is None or requested == self.tenant:
            return self.tenant
        if self.is_admin:
            return requested
        raise PermissionDeniedError(f"tenant: {self.name} acts for tenant {self.tenant!r}, not {requested!r}")

    def check_model(self, name: str) -> str:
        """``name`` if its tenant part is this identity's (or an admin calls), else 403."""
        tenant = name.split(".", 1)[0]
        if not self.sees(tenant):
            raise PermissionDeniedError(f"model {name!r} belongs to another tenant")
        return name


#: the identity of every request when authentication is turned off by configuration
AUTH_OFF = Identity("auth-off", "default", "admin")


class OidcSettings(BaseModel):
    """Bearer JWTs from an OpenID Connect issuer, verified against its JWKS."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(description="expected `iss` claim")
    audience: str = Field(description="expected `aud` claim")
    jwks_url: str = Field(description="the issuer's JWKS document (https://...)")
    tenant_claim: str = Field("tenant", description="claim that names the caller's tenant")
    role_claim: str = Field("role", description="claim that names the caller's role (reader/writer/operator/admin)")
    name_claim: str = Field("sub", description="claim recorded as the actor in the audit log")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    leeway_s: float = Field(30.0, ge=0, description="clock skew allowed on exp/nbf")


class AuthSettings(BaseModel):
    """Authentication and authorization of the HTTP API and the Serve handle."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="false turns authentication off: every caller is an admin "
                          "(/healthz says so); for a trusted single-user laptop only")
    keys_uri: str | None = Field(None, description="the API-key store: a SQLite file or a postgresql:// URI, "
                                 "password in PGPASSWORD/PGPASSFILE (default: EYENET_KEYS_URI, else .eyenet/keys.db)")
    cache_s: float = Field(5.0, ge=0, le=300, description="how long a verified key is remembered; a revoked "
                           "key stops working within this")
    public_metrics: bool = Field(False, description="serve /metrics without a credential (for a Prometheus "
                                 "that cannot send one)")
    public_console: bool = Field(True, description="serve the web console's page, script and style sheet at / "
                                 "without a credential (a browser loads them before the key is entered; every "
                                 "API call the console makes sends the key)")
    oidc: OidcSettings | None = None


# ----------------------------------------------------------------------------------------------
# API keys


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stored (never its secret)."""

    id: str
    name: str
    tenant: str
    role: str
    created: float
    last_used: float | None = None
    revoked: float | None = None

    @property
    def identity(self) -> Identity:
        return Identity(f"key:{self.name}", self.tenant, self.role)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hash(secret: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.urlsafe_b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt).decode()}${b64(digest).decode()}"


def _verify(secret: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(secret.encode(), salt=base64.urlsafe_b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=32)
        return hmac.compare_digest(got, base64.urlsafe_b64decode(digest))
    except (ValueError, TypeError):
        return False


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidParameterError(f"role: {role!r} is not one of {', '.join(ROLES)}")
    return role


class KeyStore:
    """API keys: create, list, revoke, verify. ``uri`` is a SQLite file (the embedded default,
    ``.eyenet/keys.db``) or a ``postgresql://`` URI (a table ``eyenet_keys``, shared by every node
    of a cluster; the password from ``PGPASSWORD``/``PGPASSFILE``, see :mod:`eyenet.lifecycle.database`).
    A store that cannot be reached answers :class:`UnavailableError` (503), never a refusal."""

    _COLUMNS = ("id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL, role TEXT NOT NULL, "
                "hash TEXT NOT NULL, created {real} NOT NULL, last_used {real}, revoked {real}")

    def __init__(self, uri: str | Path) -> None:
        from eyenet.lifecycle import database

        self.uri = str(uri)
        self.postgres = database.is_postgres(self.uri)
        self.table = "eyenet_keys" if self.postgres else "keys"
        self._lock = threading.Lock()
        if self.postgres:
            database.check_uri(self.uri, "auth.keys_uri")
            schema = f"CREATE TABLE IF NOT EXISTS {self.table} ({self._COLUMNS.format(real='DOUBLE PRECISION')})"
            with self._pg() as conn:
                database.ensure_schema(conn, self.table, [schema])
        else:
            self.path = Path(self.uri)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._run(f"CREATE TABLE IF NOT EXISTS {self.table} ({self._COLUMNS.format(real='REAL')})")

    @classmethod
    def for_settings(cls, settings: AuthSettings, home: Path) -> KeyStore:
        """The store ``settings.keys_uri`` names, else ``EYENET_KEYS_URI``, else ``<home>/keys.db``."""
        return cls(settings.keys_uri or default_keys_uri(home))

    @property
    def where(self) -> str:
        from eyenet.core.redact import redact

        return redact(self.uri)

    def _pg(self) -> Any:
        from eyenet.lifecycle import database

        return database.connect(self.uri, "auth.keys_uri", application_name="eyenet-keys")

    def _run(self, sql: str, params: tuple = (), *, fetch: bool = False) -> list[tuple]:
        """One statement in its own transaction (``?`` placeholders on both backends)."""
        from eyenet.lifecycle import database

        try:
            if self.postgres:
                with self._pg() as conn, conn.cursor() as cur:
                    cur.execute(sql.replace("?", "%s"), params)
                    return cur.fetchall() if fetch else []
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            try:
                db.execute("PRAGMA busy_timeout=10000")
                cur = db.execute(sql, params)
                return cur.fetchall() if fetch else []
            finally:
                db.close()
        except sqlite3.OperationalError as exc:
            raise UnavailableError(f"the API-key store {self.where} cannot be used: {exc}") from None
        except Exception as exc:
            if database.transient(exc):
                raise UnavailableError(f"the API-key store {self.where} is unreachable: "
                                       f"{database.describe(exc)}") from None
            raise

    def create(self, name: str, tenant: str, role: str) -> tuple[KeyRecord, str]:
        """A new key; returns its record and the key itself, which is shown once and never stored."""
        if not _TENANT.fullmatch(tenant):
            raise InvalidParameterError(f"tenant: {tenant!r} must be 1-63 lower-case letters, digits and _ -")
        if not _NAME.fullmatch(name):
            raise InvalidParameterError(f"name: {name!r} must be 1-64 letters, digits and _ . @ : -")
        check_role(role)
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        rec = KeyRecord(key_id, name, tenant, role, time.time())
        try:
            with self._lock:
                self._run(f"INSERT INTO {self.table} (id, name, tenant, role, hash, created) VALUES (?, ?, ?, ?, ?, ?)",
                          (key_id, name, tenant, role, _hash(secret), rec.created))
        except Exception as exc:  # a name taken already: the database's unique constraint says so
            if "unique" in str(exc).lower():
                raise InvalidParameterError(f"name: a key named {name!r} exists already") from None
            raise
        return rec, f"{KEY_PREFIX}{key_id}_{secret}"

    def list(self) -> list[KeyRecord]:
        rows = self._run(f"SELECT id, name, tenant, role, created, last_used, revoked FROM {self.table} "
                         "ORDER BY created", fetch=True)
        return [KeyRecord(*row) for row in rows]

    def get(self, id_or_name: str) -> KeyRecord:
        rows = self._run(f"SELECT id, name, tenant, role, created, last_used, revoked FROM {self.table} "
                         "WHERE id = ? OR name = ? ORDER BY id = ? DESC", (id_or_name, id_or_name, id_or_name),
                         fetch=True)
        if not rows:
            raise UnknownNameError(f"no API key with id or name {id_or_name!r}")
        return KeyRecord(*rows[0])

    def revoke(self, id_or_name: str) -> KeyRecord:
        rec = self.get(id_or_name)
        if rec.revoked is None:
            with self._lock:
                self._run(f"UPDATE {self.table} SET revoked = ? WHERE id = ? AND revoked IS NULL",
                          (time.time(), rec.id))
        return self.get(rec.id)

    def verify(self, key: str) -> KeyRecord | None:
        """The record of a valid, unrevoked key; None for anything else (same answer for every failure)."""
        got = self.check(key)
        return None if got is None else got[0]

    def check(self, key: str, matched: str | None = None) -> tuple[KeyRecord, str] | None:
        """:meth:`verify`, and the stored hash the key matched. ``matched``: the stored hash this very
        key matched before (its caller keeps it by the key's SHA-256 digest); while the key is stored
        with that hash, it is the same key, so only its revocation is looked up and no hash is
        computed (scrypt costs tens of ms of CPU and 16 MiB: a replica re-checking each key in use
        every few seconds spent a core's worth of bursts on it)."""
        m = _KEY.fullmatch(key)
        if m is None:
            return None
        rows = self._run(f"SELECT id, name, tenant, role, created, last_used, revoked, hash FROM {self.table} "
                         "WHERE id = ?", (m.group(1),), fetch=True)
        row = rows[0] if rows else None
        if row is None or row[6] is not None:
            return None
        if not (matched is not None and hmac.compare_digest(matched, row[7])) and not _verify(m.group(2), row[7]):
            return None
        return KeyRecord(*row[:7]), row[7]

    def touch(self, key_id: str, when: float) -> None:
        with self._lock:
            self._run(f"UPDATE {self.table} SET last_used = ? WHERE id = ?", (when, key_id))


# ----------------------------------------------------------------------------------------------
# credentials -> identity


class Authenticator:
    """``Authorization: Bearer ...`` -> :class:`Identity`, with a bounded in-memory cache of verified
    credentials (``cache_s``) so the request path rarely pays for a hash or a signature."""

    #: credentials remembered at most (least recently used forgotten first)
    CACHE_SIZE = 10_000
    #: how often a key's ``last_used`` is written (at most once per key per this many seconds)
    TOUCH_S = 60.0
    #: hash or signature checks running at once (each costs tens of ms of CPU and 16 MiB)
    SLOW_CHECKS = 2

    def __init__(self, settings: AuthSettings, keys: KeyStore | None = None) -> None:
        self.settings = settings
        self.keys = keys
        # digest -> (until, the identity, or the AuthenticationError that refused it)
        self._cache: OrderedDict[bytes, tuple[float, Identity | AuthenticationError]] = OrderedDict()
        self._touched: dict[str, float] = {}
        # digest -> the stored hash that key matched: its next checks need no hash (KeyStore.check)
        self._matched: OrderedDict[bytes, str] = OrderedDict()
        self._jwks: Any = None
        self._inflight: dict[bytes, asyncio.Future[Identity]] = {}
        self._slow: asyncio.Semaphore | None = None  # made on the event loop that first needs it

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def cached(self, digest: bytes) -> tuple[float, Identity] | None:
        """``(until, identity)`` of a recently verified credential, by its SHA-256 digest (None if not
        known); raises the :class:`AuthenticationError` of a recently refused one."""
        hit = self._cache.get(digest)
        if hit is None or hit[0] < time.monotonic():
            return None
        self._cache.move_to_end(digest)
        if isinstance(hit[1], AuthenticationError):
            raise AuthenticationError(str(hit[1]))
        return hit  # type: ignore[return-value]

    def _remember(self, digest: bytes, outcome: Identity | AuthenticationError) -> None:
        self._cache[digest] = (time.monotonic() + self.settings.cache_s, outcome)
        self._cache.move_to_end(digest)
        while len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)

    def verify(self, credential: str) -> Identity:
        """Check a credential the slow way (a hash or a signature); remember the outcome, good or bad."""
        digest = hashlib.sha256(credential.encode()).digest()
        try:
            identity = self._check(credential, digest)
        except AuthenticationError as exc:
            self._remember(digest, exc)
            raise
        self._remember(digest, identity)
        return identity

    def _check(self, credential: str, digest: bytes) -> Identity:
        if credential.startswith(KEY_PREFIX):
            got = self.keys.check(credential, self._matched.get(digest)) if self.keys is not None else None
            if got is None:
                self._matched.pop(digest, None)
                raise AuthenticationError("credential: unknown, revoked or malformed API key")
            rec, self._matched[digest] = got
            self._matched.move_to_end(digest)
            while len(self._matched) > self.CACHE_SIZE:
                self._matched.popitem(last=False)
            now = time.time()
            if now - self._touched.get(rec.id, 0.0) >= self.TOUCH_S:
                self._touched[rec.id] = now
                self.keys.touch(rec.id, now)
            return rec.identity
        if self.settings.oidc is not None and credential.count(".") == 2:
            return self._verify_token(credential)
        raise AuthenticationError("credential: expected an EyeNet API key (eyn_...) or an OIDC bearer token")

    def _verify_token(self, token: str) -> Identity:
        import jwt

        oidc = self.settings.oidc
        try:
            if self._jwks is None:
                self._jwks = jwt.PyJWKClient(oidc.jwks_url, cache_keys=True)
            key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key.key, algorithms=oidc.algorithms, audience=oidc.audience,
                                issuer=oidc.issuer, leeway=oidc.leeway_s,
                                options={"require": ["exp", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"credential: token rejected ({type(exc).__name__}: {exc})") from None
        tenant, role = claims.get(oidc.tenant_claim), claims.get(oidc.role_claim)
        name = claims.get(oidc.name_claim)
        if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
            raise AuthenticationError(f"credential: token has no valid {oidc.tenant_claim!r} claim")
        if role not in ROLES:
            raise AuthenticationError(f"credential: token's {oidc.role_claim!r} claim must be one of {', '.join(ROLES)}")
        return Identity(f"oidc:{name}", tenant, role)

    async def identify(self, authorization: str | None) -> Identity:
        """The identity behind an ``Authorization`` header value (401 without a valid one)."""
        if not self.settings.enabled:
            return AUTH_OFF
        if not authorization:
            raise AuthenticationError("credential: missing; send 'Authorization: Bearer <API key or token>'")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential or len(credential) > 8192:
            raise AuthenticationError("credential: expected 'Authorization: Bearer <API key or token>'")
        digest = hashlib.sha256(credential.encode()).digest()
        hit = self.cached(digest)
        if hit is not None:
            until, identity = hit
            # refresh ahead: past half its time, a key in use is checked again in the background, so a
            # busy client never waits for its own re-check (a revoked key still stops within cache_s)
            if until - time.monotonic() < self.settings.cache_s / 2 and digest not in self._inflight:
                self._start_check(credential, digest)
            return identity
        pending = self._inflight.get(digest)
        if pending is None:  # the first request with this credential starts its check; later ones share it
            pending = self._start_check(credential, digest)
        # a request that goes away (its client disconnected) leaves the check running for the others
        return await asyncio.shield(pending)

    def _start_check(self, credential: str, digest: bytes) -> asyncio.Task[Identity]:
        pending = asyncio.get_running_loop().create_task(self._shared_check(credential, digest))
        pending.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved, if all went away
        self._inflight[digest] = pending
        return pending

    async def _shared_check(self, credential: str, digest: bytes) -> Identity:
        try:
            if self._slow is None:
                self._slow = asyncio.Semaphore(self.SLOW_CHECKS)
            async with self._slow:
                return await asyncio.to_thread(self.verify, credential)
        finally:
            del self._inflight[digest]


# ----------------------------------------------------------------------------------------------
# the route policy and its middleware


@dataclass(frozen=True)
class Rule:
    method: str  # "*" for any
    pattern: re.Pattern[str]
    role: str | None  # None: public


def _rule(method: str, template: str, role: str | None) -> Rule:
    regex = re.sub(r"\{[^}]+\}", "[^/]+", template)
    return Rule(method, re.compile(regex), role)


def policy(settings: AuthSettings) -> list[Rule]:
    """Which role each route needs, first match wins; anything unlisted needs ``reader``."""
    return [
        _rule("GET", "/healthz", None),
        _rule("GET", "/metrics", None if settings.public_metrics else "reader"),
        *(_rule("GET", path, None if settings.public_console else "reader")
          for path in ("/", "/console.{ext}", "/vendor/{name}")),
        _rule("GET", "/docs", None), _rule("GET", "/docs/oauth2-redirect", None), _rule("GET", "/openapi.json", None),
        _rule("POST", "/v1/detect", "writer"),
        _rule("POST", "/v1/stream", "writer"),
        _rule("POST", "/v1/stream/batch", "writer"),
        _rule("POST", "/api/v1/write", "writer"),
        _rule("POST", "/v1/forecast", "writer"),
        _rule("POST", "/v1/feedback", "writer"),
        _rule("POST", "/v1/models/{name}/promote", "operator"),
        _rule("POST", "/v1/models/{name}/rollback", "operator"),
        _rule("POST", "/v1/models/{name}/review", "operator"),
        _rule("POST", "/v1/jobs", "operator"),
        _rule("POST", "/v1/jobs/{id}/cancel", "operator"),
        _rule("*", "/v1/keys", "admin"), _rule("*", "/v1/keys/{id}", "admin"),
        _rule("GET", "/v1/{rest}", "reader"), _rule("GET", "/v1/{a}/{b}", "reader"),
        _rule("GET", "/v1/{a}/{b}/{c}", "reader"),
    ]


def required_role(rules: Iterable[Rule], method: str, path: str) -> str | None:
    for r in rules:
        if (r.method == "*" or r.method == method or (method == "HEAD" and r.method == "GET")) \
                and r.pattern.fullmatch(path):
            return r.role
    return "reader"


_CURRENT: contextvars.ContextVar[Identity] = contextvars.ContextVar("eyenet_identity")


def current() -> Identity:
    """The identity of the HTTP request being served (set by :class:`AuthMiddleware`)."""
    try:
        return _CURRENT.get()
    except LookupError:
        raise AuthenticationError("credential: no identity for this call") from None


class AuthMiddleware:
    """Pure ASGI: 401 without a valid credential, 403 for a role below the route's; otherwise the
    request goes on with its :class:`Identity` in :func:`current`."""

    def __init__(self, app: Any, authenticator: Authenticator | Callable[[], Authenticator], *,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.app = app
        self._given = authenticator  # or how to get it: a Serve replica sets its own when it starts
        self._rules: tuple[Any, list[Rule]] = (None, [])
        self.on_error = on_error  # counts refusals (the error-metric kind), if given

    @property
    def auth(self) -> Authenticator:
        return self._given if isinstance(self._given, Authenticator) else self._given()

    @property
    def rules(self) -> list[Rule]:
        settings = self.auth.settings
        if self._rules[0] is not settings:
            self._rules = (settings, policy(settings))
        return self._rules[1]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, root = scope["path"], scope.get("root_path", "")
        path = path[len(root):] if root and path.startswith(root) else path
        role = required_role(self.rules, scope["method"], path)
        try:
            if role is None and self.auth.enabled:
                identity = Identity("public", "default", "reader")
            else:
                header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
                identity = await self.auth.identify(header.decode("latin-1") or None)
                if role is not None and not identity.allows(role):
                    raise PermissionDeniedError(f"role: {scope['method']} {path} needs {role}; "
                                                f"{identity.name} is {identity.role}")
        except (AuthenticationError, PermissionDeniedError) as exc:
            return await self._refuse(exc, scope, receive, send)
        except UnavailableError as exc:  # the key store could not be read: retry, never a 500
            return await self._unavailable(exc, scope, receive, send)
        token = _CURRENT.set(identity)
        try:
            await self.app(scope, receive, send)
        finally:
            _CURRENT.reset(token)

    async def _refuse(self, exc: Exception, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from starlette.responses import JSONResponse

        unauthenticated = isinstance(exc, AuthenticationError)
        if self.on_error is not None:
            self.on_error("unauthenticated" if unauthenticated else "forbidden")
        headers = {"WWW-Authenticate": 'Bearer realm="eyenet"'} if unauthenticated else {}
        response = JSONResponse({"error": str(exc)}, status_code=401 if unauthenticated else 403, headers=headers)
        await response(scope, receive, send)


    async def _unavailable(self, exc: UnavailableError, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from starlette.responses import JSONResponse

        if self.on_error is not None:
            self.on_error("unavailable")
        retry = max(1, round(exc.retry_after_s))
        response = JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": str(retry)})
        await response(scope, receive, send)


#: the environment variable naming the API-key store when ``auth.keys_uri`` is not set
ENV_KEYS_URI = "EYENET_KEYS_URI"


def default_keys_uri(home: Path) -> str:
    """``EYENET_KEYS_URI``, else ``<home>/keys.db``."""
    import os

    return os.environ.get(ENV_KEYS_URI, "").strip() or str(home / "keys.db")
