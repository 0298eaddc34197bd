"""The HTTP edge without Ray: body limit, latency labels, error statuses and headers, OpenAPI error docs."""
from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from fastapi.testclient import TestClient

from eyenet.core.errors import EyenetError, InvalidInputError, LifecycleError, NotServableError, UnknownNameError
from eyenet.monitoring import metrics as m
from eyenet.serving import http


class _Slow(EyenetError):
    """An error that names its own Retry-After."""

    retry_after_s = 2.5


class _Quota(EyenetError):
    retry_after_s = 7


@pytest.fixture()
def client(monkeypatch):
    monkeypatch.setitem(http.STATUS, _Quota, (429, "quota"))
    app = FastAPI()
    http.install(app)

    @app.post("/v1/echo", responses=http.responses(413, 422))
    async def echo(body: dict) -> dict:
        return {"keys": len(body)}

    @app.get("/v1/models/{name}/history", responses=http.responses(401, 403, 404, 409, 422, 503))
    async def history(name: str, limit: int | None = None) -> dict:
        errors = {"gone": UnknownNameError(f"{name} is unknown"), "busy": LifecycleError("no challenger"),
                  "away": NotServableError("MLflow at http://alice:s3cret@mlflow:5000: connecting failed"),
                  "slow": _Slow("the controller did not answer in time"), "quota": _Quota("quota used up"),
                  "bad": InvalidInputError("limit: bad")}
        if name in errors:
            raise errors[name]
        return {"name": name, "limit": limit}

    @app.get("/metrics", response_class=PlainTextResponse, responses=http.responses(401, 403))
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse("up 1\n")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return TestClient(app)


def _latency_counts() -> dict[str, float]:
    out = {}
    for line in m.exposition().decode().splitlines():
        if line.startswith("eyenet_request_latency_ms_count{"):
            label = line.split('endpoint="', 1)[1].split('"', 1)[0]
            out[label] = float(line.rsplit(" ", 1)[1])
    return out


def test_a_body_over_the_limit_is_refused_by_content_length_naming_the_limit(client):
    limit = http.LIMITS.max_body_bytes
    resp = client.post("/v1/echo", content=b"x" * (limit + 1), headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert resp.json() == {"error": f"body: {limit + 1} bytes, at most {limit}"}


def test_a_chunked_body_without_content_length_is_counted_as_read(client):
    limit = http.LIMITS.max_body_bytes

    def chunks(total: int):
        yield b'{"a": "'
        sent = 0
        while sent < total:
            yield b"x" * min(65536, total - sent)
            sent += 65536
        yield b'"}'

    resp = client.post("/v1/echo", content=chunks(limit + 10), headers={"content-type": "application/json"})
    assert resp.request.headers.get("content-length") is None  # really chunked
    assert resp.status_code == 413
    assert resp.json()["error"] == f"body: more than {limit} bytes, at most {limit}"
    ok = client.post("/v1/echo", content=chunks(1000), headers={"content-type": "application/json"})
    assert ok.status_code == 200 and ok.json() == {"keys": 1}


def test_the_limit_counts_bytes_not_what_content_length_claims():
    app = FastAPI()
    app.add_middleware(http.LimitAndMeasure, limit=100)

    @app.post("/v1/echo")
    async def echo(body: dict) -> dict:
        return {"keys": len(body)}

    import asyncio

    sent: list[dict] = []

    async def run() -> None:
        body = [{"type": "http.request", "body": b"{" + b" " * 80, "more_body": True},
                {"type": "http.request", "body": b" " * 80 + b"}", "more_body": False}]

        async def receive():
            return body.pop(0) if body else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/echo", "raw_path": b"/v1/echo", "root_path": "",
                 "scheme": "http", "query_string": b"", "server": ("test", 80), "client": ("c", 1),
                 "headers": [(b"content-type", b"application/json"), (b"content-length", b"10")],
                 "http_version": "1.1", "asgi": {"version": "3.0"}}
        await app(scope, receive, send)

    asyncio.run(run())
    assert sent[0]["status"] == 413


def test_latency_is_labelled_by_route_template_and_unknown_paths_share_one_label(client):
    before = _latency_counts()
    for name in ("a.b.c", "d.e.f", "g.h.i"):
        resp = client.get(f"/v1/models/{name}/history")
        assert resp.status_code == 200 and "app;dur=" in resp.headers["server-timing"]
    for path in ("/v1/nothing", "/v1/x/y/z", "/random"):
        assert client.get(path).status_code == 404
    client.get("/healthz")
    after = _latency_counts()
    assert after["/v1/models/{name}/history"] - before.get("/v1/models/{name}/history", 0) == 3
    assert after["other"] - before.get("other", 0) == 3
    assert not any(k.startswith("/v1/models/a") or k in ("/v1/nothing", "/healthz") for k in after)


@pytest.mark.parametrize("name, status, retry_after", [
    ("gone", 404, None), ("busy", 409, None), ("bad", 422, None),
    ("away", 503, "1"), ("slow", 503, "3"), ("quota", 429, "7"),
])
def test_errors_have_their_status_an_error_body_and_retry_after_on_503_and_429(client, name, status, retry_after):
    resp = client.get(f"/v1/models/{name}/history")
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/json"
    assert set(resp.json()) == {"error"}
    assert resp.headers.get("retry-after") == retry_after


def test_credentials_in_error_messages_are_redacted(client):
    body = client.get("/v1/models/away/history").json()["error"]
    assert "s3cret" not in body and "alice" not in body and "http://***@mlflow:5000" in body


def test_schema_errors_and_unknown_paths_answer_the_error_body(client):
    resp = client.get("/v1/models/a.b.c/history", params={"limit": "many"})
    assert resp.status_code == 422 and resp.json()["error"].startswith("query.limit:")
    resp = client.get("/v1/none")
    assert resp.status_code == 404 and resp.json() == {"error": "Not Found"}
    resp = client.post("/v1/echo", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert resp.status_code == 422 and resp.json()["error"].startswith("body:"), resp.text


def test_responses_documents_every_status_with_the_error_schema(client):
    doc = client.get("/openapi.json").json()
    got = doc["paths"]["/v1/models/{name}/history"]["get"]["responses"]
    for status in ("401", "403", "404", "409", "422", "503"):
        assert got[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert "Retry-After" in got["503"]["headers"] and "WWW-Authenticate" in got["401"]["headers"]
    # FastAPI's own 422 body is never documented: the handlers answer ErrorBody
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert doc["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    metrics = doc["paths"]["/metrics"]["get"]["responses"]
    assert "text/plain" in metrics["200"]["content"]
    assert set(metrics["401"]["content"]) == {"application/json"}  # errors are JSON on a text route too
    with pytest.raises(ValueError):
        http.responses(418)


def test_retry_after_is_whole_seconds_at_least_one():
    assert http.retry_after(None) == "1"
    assert http.retry_after(_Slow()) == "3"
    assert http.retry_after(None, default=0.1) == "1"
    assert http.error_headers(503) == {"Retry-After": "1"}
    assert http.error_headers(404) == {}
