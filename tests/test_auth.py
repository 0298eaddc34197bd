"""Credentials, roles and tenants without Ray: the key store, the authenticator (API keys and OIDC
tokens verified against a real JWKS document), the route policy and the ASGI middleware."""
from __future__ import annotations

import asyncio
import functools
import http.server
import json
import threading
import time
from pathlib import Path

import pytest

from eyenet.core.errors import AuthenticationError, InvalidParameterError, PermissionDeniedError, UnknownNameError
from eyenet.serving import auth
from eyenet.serving.auth import AuthSettings, Authenticator, Identity, KeyStore, OidcSettings


@pytest.fixture()
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "keys.db")


def _identify(authenticator: Authenticator, header: str | None) -> Identity:
    return asyncio.run(authenticator.identify(header))


def test_a_key_is_stored_hashed_and_verifies_to_its_identity(keys: KeyStore, tmp_path: Path) -> None:
    rec, key = keys.create("ops-bot", "acme", "operator")
    assert key.startswith("eyn_") and rec.id in key
    assert key.split("_", 2)[2] not in (tmp_path / "keys.db").read_bytes().decode("latin-1")  # no secret at rest
    assert keys.verify(key).identity == Identity("key:ops-bot", "acme", "operator")
    assert keys.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # a wrong secret
    assert keys.verify("eyn_" + "0" * 12 + "_" + "x" * 43) is None  # an unknown id
    assert [r.name for r in keys.list()] == ["ops-bot"]


def test_keys_are_validated_and_unique(keys: KeyStore) -> None:
    with pytest.raises(InvalidParameterError, match="role"):
        keys.create("a", "acme", "root")
    with pytest.raises(InvalidParameterError, match="tenant"):
        keys.create("a", "acme\n", "reader")  # fully matched: no trailing newline
    with pytest.raises(InvalidParameterError, match="name"):
        keys.create("bad name", "acme", "reader")
    keys.create("a", "acme", "reader")
    with pytest.raises(InvalidParameterError, match="exists"):
        keys.create("a", "other", "reader")
    with pytest.raises(UnknownNameError):
        keys.revoke("nope")


def test_a_revoked_key_is_refused_once_the_cache_expires(keys: KeyStore) -> None:
    rec, key = keys.create("reader-1", "acme", "reader")
    authenticator = Authenticator(AuthSettings(cache_s=0.2), keys)
    assert _identify(authenticator, f"Bearer {key}").tenant == "acme"
    assert keys.get(rec.id).last_used is not None
    keys.revoke("reader-1")
    assert keys.get(rec.id).revoked is not None
    time.sleep(0.3)
    with pytest.raises(AuthenticationError, match="revoked"):
        _identify(authenticator, f"Bearer {key}")


class CountingKeys(KeyStore):
    """A real key store that counts the checks it is asked for."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.checks = 0

    def check(self, key: str, matched: str | None = None):
        self.checks += 1
        return super().check(key, matched)


def test_a_key_is_hashed_once_per_process_and_later_checks_only_look_its_revocation_up(
        keys: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    hashes = []
    real = auth._verify
    monkeypatch.setattr(auth, "_verify", lambda secret, stored: hashes.append(1) or real(secret, stored))
    _, key = keys.create("w", "acme", "writer")
    _, other = keys.create("w2", "acme", "writer")
    authenticator = Authenticator(AuthSettings(cache_s=0.2), keys)
    assert _identify(authenticator, f"Bearer {key}").tenant == "acme" and len(hashes) == 1
    for _ in range(3):  # each time past the cache: checked again, without a hash
        time.sleep(0.25)
        assert _identify(authenticator, f"Bearer {key}").role == "writer"
    assert len(hashes) == 1
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")  # another credential: hashed (and refused)
    with pytest.raises(AuthenticationError):
        _identify(authenticator, f"Bearer {wrong}")
    assert _identify(authenticator, f"Bearer {other}").name == "key:w2" and len(hashes) == 3
    keys.revoke("w")
    time.sleep(0.25)
    with pytest.raises(AuthenticationError, match="revoked"):
        _identify(authenticator, f"Bearer {key}")
    assert len(hashes) == 3  # the revocation was looked up, not hashed
    # a store that keeps another hash under the key's id: not the key that matched, hashed again
    keys._run(f"UPDATE {keys.table} SET hash = ?, revoked = NULL WHERE name = ?", (auth._hash("other"), "w"))
    time.sleep(0.25)
    with pytest.raises(AuthenticationError):
        _identify(authenticator, f"Bearer {key}")
    assert len(hashes) == 4


def test_concurrent_requests_with_one_key_share_one_check_and_a_refusal_is_remembered(tmp_path: Path) -> None:
    keys = CountingKeys(tmp_path / "keys.db")
    _, key = keys.create("w", "acme", "writer")
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    authenticator = Authenticator(AuthSettings(cache_s=5), keys)

    async def burst(header: str, n: int) -> list:
        return await asyncio.gather(*(authenticator.identify(header) for _ in range(n)), return_exceptions=True)

    got = asyncio.run(burst(f"Bearer {key}", 32))
    assert all(isinstance(g, Identity) and g.tenant == "acme" for g in got) and keys.checks == 1
    refused = asyncio.run(burst(f"Bearer {wrong}", 32))
    assert all(isinstance(r, AuthenticationError) for r in refused) and keys.checks == 2
    for _ in range(5):  # a client repeating a bad key: refused from memory, no hash
        with pytest.raises(AuthenticationError, match="unknown, revoked or malformed"):
            _identify(authenticator, f"Bearer {wrong}")
    assert keys.checks == 2


def test_a_key_in_use_is_checked_again_in_the_background_before_it_expires(tmp_path: Path) -> None:
    """Refresh ahead: past half of ``cache_s`` a request starts the key's next check and does not
    wait for it; the renewed entry outlives the first; a key revoked meanwhile is still refused."""

    class HeldKeys(CountingKeys):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self.release = threading.Event()
            self.started = 0

        def check(self, key: str, matched: str | None = None):
            self.started += 1
            if self.started > 1:  # every check after the first waits until the test lets it go
                assert self.release.wait(10)
            return super().check(key, matched)

    keys = HeldKeys(tmp_path / "keys.db")
    _, key = keys.create("w", "acme", "writer")
    authenticator = Authenticator(AuthSettings(cache_s=1.0), keys)
    header = f"Bearer {key}"

    async def scenario() -> None:
        assert (await authenticator.identify(header)).tenant == "acme" and keys.checks == 1
        first_until = time.monotonic() + 1.0
        assert (await authenticator.identify(header)).tenant == "acme" and keys.checks == 1  # fresh: no check
        await asyncio.sleep(0.6)
        # past half its time: answered from the cache while the next check runs (held by the test)
        assert (await authenticator.identify(header)).tenant == "acme"
        for _ in range(100):
            if keys.started == 2:
                break
            await asyncio.sleep(0.01)
        assert keys.started == 2 and keys.checks == 1 and not keys.release.is_set()
        assert (await authenticator.identify(header)).tenant == "acme" and keys.started == 2  # one at a time
        keys.release.set()
        while authenticator._inflight:
            await asyncio.sleep(0.01)
        await asyncio.sleep(max(0.0, first_until - time.monotonic()) + 0.05)
        assert (await authenticator.identify(header)).tenant == "acme" and keys.checks == 2  # renewed
        keys.revoke("w")
        await asyncio.sleep(1.1)
        with pytest.raises(AuthenticationError, match="revoked"):
            await authenticator.identify(header)

    asyncio.run(scenario())


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer nonsense", "Bearer eyn_short"])
def test_missing_or_malformed_credentials_are_401(keys: KeyStore, header: str | None) -> None:
    with pytest.raises(AuthenticationError, match="credential"):
        _identify(Authenticator(AuthSettings(), keys), header)


def test_auth_off_is_an_admin_of_any_tenant() -> None:
    who = _identify(Authenticator(AuthSettings(enabled=False)), None)
    assert who == auth.AUTH_OFF and who.tenant_for("other") == "other"


def test_tenants_and_roles() -> None:
    writer = Identity("key:w", "acme", "writer")
    assert writer.allows("reader") and writer.allows("writer") and not writer.allows("operator")
    assert writer.tenant_for(None) == "acme" and writer.tenant_for("acme") == "acme"
    with pytest.raises(PermissionDeniedError, match="tenant"):
        writer.tenant_for("globex")
    with pytest.raises(PermissionDeniedError, match="another tenant"):
        writer.check_model("globex.web.ensemble")
    assert writer.check_model("acme.web.ensemble") == "acme.web.ensemble"
    admin = Identity("key:root", "acme", "admin")
    assert admin.tenant_for("globex") == "globex" and admin.check_model("globex.web.ensemble")


@pytest.mark.parametrize(("method", "path", "role"), [
    ("GET", "/healthz", None), ("GET", "/openapi.json", None), ("GET", "/metrics", "reader"),
    ("GET", "/v1/models", "reader"), ("GET", "/v1/models/acme.a.ensemble/history", "reader"),
    ("GET", "/v1/controller", "reader"), ("GET", "/v1/detectors", "reader"),
    ("POST", "/v1/detect", "writer"), ("POST", "/v1/stream", "writer"), ("POST", "/v1/forecast", "writer"),
    ("POST", "/v1/feedback", "writer"), ("POST", "/v1/models/acme.a.ensemble/promote", "operator"),
    ("POST", "/v1/models/acme.a.ensemble/rollback", "operator"),
    ("POST", "/v1/models/acme.a.ensemble/review", "operator"),
    ("POST", "/v1/keys", "admin"), ("POST", "/nowhere", "reader"), ("DELETE", "/v1/models", "reader"),
])
def test_the_route_policy(method: str, path: str, role: str | None) -> None:
    assert auth.required_role(auth.policy(AuthSettings()), method, path) == role


def test_public_metrics_only_by_configuration() -> None:
    assert auth.required_role(auth.policy(AuthSettings(public_metrics=True)), "GET", "/metrics") is None


# -- OIDC: a real RSA key, a real JWKS document, PyJWT's client fetching it ------------------------
@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory):
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    root = tmp_path_factory.mktemp("oidc")
    (root / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    # the issuer's JWKS endpoint: a real HTTP server on loopback
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = OidcSettings(issuer="https://idp.example", audience="eyenet",
                            jwks_url=f"http://127.0.0.1:{server.server_address[1]}/jwks.json")

    def token(**claims) -> str:
        body = {"iss": "https://idp.example", "aud": "eyenet", "sub": "alice", "tenant": "acme", "role": "operator",
                "exp": time.time() + 60, **claims}
        return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="RS256",
                          headers={"kid": "k1"})

    yield settings, token
    server.shutdown()


def test_an_oidc_token_maps_its_claims_to_tenant_and_role(issuer) -> None:
    settings, token = issuer
    authenticator = Authenticator(AuthSettings(oidc=settings))
    assert _identify(authenticator, f"Bearer {token()}") == Identity("oidc:alice", "acme", "operator")


@pytest.mark.parametrize(("claims", "message"), [
    ({"exp": time.time() - 3600}, "Expired"), ({"aud": "someone-else"}, "Audience"),
    ({"iss": "https://evil.example"}, "Issuer"), ({"role": "root"}, "role"), ({"tenant": None}, "tenant"),
])
def test_bad_oidc_tokens_are_401(issuer, claims, message) -> None:
    settings, token = issuer
    with pytest.raises(AuthenticationError, match=message):
        _identify(Authenticator(AuthSettings(oidc=settings)), f"Bearer {token(**claims)}")


def test_a_token_signed_by_another_key_is_401(issuer) -> None:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    settings, _ = issuer
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({"iss": settings.issuer, "aud": "eyenet", "sub": "mallory", "tenant": "acme", "role": "admin",
                         "exp": time.time() + 60}, other, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(AuthenticationError, match="Signature"):
        _identify(Authenticator(AuthSettings(oidc=settings)), f"Bearer {forged}")


# -- the middleware on a plain FastAPI app ---------------------------------------------------------------
def test_the_middleware_answers_401_403_and_passes_the_identity(keys: KeyStore) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()

    @app.post("/v1/stream")
    async def stream() -> dict:
        who = auth.current()
        return {"tenant": who.tenant, "name": who.name}

    @app.get("/healthz")
    async def health() -> dict:
        return {"status": "ok"}

    refused: list[str] = []
    app.add_middleware(auth.AuthMiddleware, authenticator=Authenticator(AuthSettings(), keys),
                       on_error=refused.append)
    _, writer = keys.create("w", "acme", "writer")
    _, reader = keys.create("r", "acme", "reader")
    client = TestClient(app)
    assert client.get("/healthz").status_code == 200
    r = client.post("/v1/stream")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer") and "credential" in r.json()["error"]
    r = client.post("/v1/stream", headers={"Authorization": f"Bearer {reader}"})
    assert r.status_code == 403 and "needs writer" in r.json()["error"]
    r = client.post("/v1/stream", headers={"Authorization": f"Bearer {writer}"})
    assert r.status_code == 200 and r.json() == {"tenant": "acme", "name": "key:w"}
    assert refused == ["unauthenticated", "forbidden"]


def test_keys_in_postgresql_are_shared_by_every_store_on_the_uri(pg_env) -> None:
    """A cluster's routers each open the store; a key made or revoked by one is seen by all. The
    password comes from PGPASSWORD, never the URI."""
    uri = pg_env.create_database("keys_shared")
    assert "password" not in uri and pg_env.password not in uri
    cli, router = KeyStore(uri), KeyStore(uri)
    rec, key = cli.create("ops", "acme", "operator")
    assert router.verify(key).identity == Identity("key:ops", "acme", "operator")
    with pytest.raises(InvalidParameterError, match="exists"):
        router.create("ops", "acme", "reader")
    router.touch(rec.id, 123.0)
    assert cli.get("ops").last_used == 123.0 and [r.name for r in cli.list()] == ["ops"]
    cli.revoke(rec.id)
    assert router.verify(key) is None and router.get("ops").revoked is not None


def test_an_unreachable_key_store_is_unavailable_not_a_refusal(pg_env, tmp_path: Path) -> None:
    from eyenet.core.errors import UnavailableError

    uri = pg_env.create_database("keys_down")
    store = KeyStore(uri)
    _, key = store.create("w", "acme", "writer")
    pg_env.stop()
    try:
        with pytest.raises(UnavailableError, match="API-key store"):
            Authenticator(AuthSettings(), store).verify(key)
    finally:
        pg_env.start()
    assert store.verify(key) is not None


def test_a_request_that_goes_away_leaves_the_credential_check_to_the_requests_sharing_it(keys: KeyStore) -> None:
    _, key = keys.create("bot", "acme", "writer")
    authenticator = Authenticator(AuthSettings(), keys)

    async def main() -> Identity:
        first = asyncio.create_task(authenticator.identify(f"Bearer {key}"))
        await asyncio.sleep(0)  # its check (a slow hash, in a thread) has started
        second = asyncio.create_task(authenticator.identify(f"Bearer {key}"))
        await asyncio.sleep(0)
        first.cancel()  # its client disconnected
        return await second

    assert asyncio.run(main()) == Identity("key:bot", "acme", "writer")


def test_a_key_store_that_cannot_be_read_answers_503_with_retry_after_through_the_middleware(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    store = KeyStore(tmp_path / "keys.db")
    _, key = store.create("w", "acme", "writer")
    app = Starlette(routes=[Route("/v1/models", lambda request: PlainTextResponse("ok"))])
    client = TestClient(auth.AuthMiddleware(app, Authenticator(AuthSettings(), store)))
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    (tmp_path / "keys.db").unlink()
    (tmp_path / "keys.db").mkdir()  # the store's file is now a folder: it cannot be opened
    _, other = KeyStore(tmp_path / "other.db").create("x", "acme", "writer")
    r = client.get("/v1/models", headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 503 and r.headers["retry-after"] and "API-key store" in r.json()["error"]
