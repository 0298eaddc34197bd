"""The one map from exceptions to HTTP statuses and error-metric kinds, and the HTTP edge of the API.

The Serve ingress (``eyenet.serve.deployments``) calls :func:`install` on its
FastAPI app: the :class:`LimitAndMeasure` middleware (body limit, latency by
route template) and the exception handlers, which answer with
:func:`error_status`, the body ``{"error": message}`` and, for a 429 or 503, a
``Retry-After`` header (:func:`error_response`), and count
``eyenet_errors_total`` by kind. The most specific class listed in
:data:`STATUS` wins (a :class:`~eyenet.core.errors.NotEnoughDataError` is an
``InvalidInputError``: 422). Whatever a request got wrong is a 4xx; a 5xx means
the service could not answer (a dependency away or slow, a model that would not
load) and is always 503 with ``Retry-After``, so clients retry it. Exceptions
outside the EyeNet family are not handled here: they are bugs, and Starlette
answers them 500.

Routes document what they can answer with :func:`responses`
(``@app.post(..., responses=http.responses(401, 403, 422, 503))``), so the OpenAPI
document lists every error status with its body schema and content type.

Nothing here needs Ray: a plain Starlette/FastAPI app and ``httpx`` test it.
"""
from __future__ import annotations

import math
import time
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from eyenet.core.errors import (
    ArtifactError,
    AuthenticationError,
    EyenetError,
    InvalidInputError,
    InvalidParameterError,
    LifecycleError,
    NotFittedError,
    NotServableError,
    PayloadTooLargeError,
    PermissionDeniedError,
    QuotaExceededError,
    UnavailableError,
    UnknownNameError,
)
from eyenet.core.redact import redact
from eyenet.lifecycle.registry import RegistryError
from eyenet.monitoring import metrics as m
from eyenet.serving.schemas import LIMITS, validation_message

#: exception class -> (HTTP status, ``eyenet_errors_total`` kind)
STATUS: dict[type[BaseException], tuple[int, str]] = {
    AuthenticationError: (401, "unauthenticated"),
    PermissionDeniedError: (403, "forbidden"),
    PayloadTooLargeError: (413, "bad_input"),  # e.g. a remote_write body that decompresses past its bound
    InvalidInputError: (422, "bad_input"),  # also NotEnoughDataError
    InvalidParameterError: (422, "bad_input"),
    ValidationError: (422, "bad_input"),  # a pydantic model built from request data inside a route
    UnknownNameError: (404, "unknown_name"),
    LifecycleError: (409, "bad_input"),  # also GateRejectedError: not possible in the model's current state
    NotFittedError: (503, "internal"),  # a served model that cannot score: the service's fault, not the request's
    ArtifactError: (503, "internal"),
    NotServableError: (503, "unavailable"),
    UnavailableError: (503, "unavailable"),  # an actor away or slower than its timeout: Retry-After
    QuotaExceededError: (429, "quota"),  # answered with Retry-After: the exception's retry_after_s
    RegistryError: (503, "registry"),
    EyenetError: (503, "internal"),  # any other error of the family
}

#: the response of a request that fails FastAPI's schema validation (the body, a path or query parameter)
BAD_REQUEST: tuple[int, str] = (422, "bad_input")
#: the response of a body over ``Limits.max_body_bytes``
TOO_LARGE: tuple[int, str] = (413, "bad_input")
#: ``Retry-After`` (seconds) of a 503 or 429 whose exception names none (``retry_after_s``)
DEFAULT_RETRY_AFTER_S: float = 1.0
#: statuses that carry ``Retry-After``
RETRYABLE = frozenset({429, 503})


def error_status(exc: BaseException) -> tuple[int, str] | None:
    """``(HTTP status, error kind)`` of an exception, or None for one that is not EyeNet's to map."""
    for cls in type(exc).__mro__:
        hit = STATUS.get(cls)
        if hit is not None:
            return hit
    return None


def error_body(exc: BaseException) -> dict[str, Any]:
    """The JSON body of an error response: ``{"error": message}``, the message naming the problem
    (credentials in URIs redacted)."""
    if isinstance(exc, ValidationError):
        return {"error": validation_message(exc.errors())}
    return {"error": redact(str(exc))}


def retry_after(exc: BaseException | None = None, default: float | None = None) -> str:
    """The ``Retry-After`` value (whole seconds, at least 1) of a retryable error: the exception's
    ``retry_after_s`` when it has one, else ``default``, else :data:`DEFAULT_RETRY_AFTER_S`."""
    s = getattr(exc, "retry_after_s", None)
    if s is None:
        s = DEFAULT_RETRY_AFTER_S if default is None else default
    try:
        s = float(s)
    except (TypeError, ValueError):
        s = DEFAULT_RETRY_AFTER_S
    return str(max(1, math.ceil(s))) if math.isfinite(s) else str(max(1, math.ceil(DEFAULT_RETRY_AFTER_S)))


def error_headers(status: int, exc: BaseException | None = None) -> dict[str, str]:
    """Headers of an error response: ``Retry-After`` on 429 and 503, ``WWW-Authenticate`` on 401."""
    headers = {}
    if status in RETRYABLE:
        headers["Retry-After"] = retry_after(exc)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="eyenet"'
    return headers


class JSONResponse(Response):
    """A JSON body rendered by orjson: a 1,000-series batch answer took 6 % of a router's CPU with
    the standard library's encoder (py-spy, bench.batch). Bodies are JSON-ready (no NaN: null)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: BaseException, status: int | None = None, kind: str | None = None) -> JSONResponse:
    """The response to an exception (its mapped status, else 503), counted in ``eyenet_errors_total``."""
    if status is None:
        status, mapped_kind = error_status(exc) or (503, "internal")
        kind = kind or mapped_kind
    m.ERRORS.labels(kind or "internal").inc()
    return JSONResponse(error_body(exc), status_code=status, headers=error_headers(status, exc))


def message_response(status: int, message: str, kind: str, exc: BaseException | None = None) -> JSONResponse:
    """An error response from a status and a message (counted, with the headers of its status)."""
    m.ERRORS.labels(kind).inc()
    return JSONResponse({"error": redact(message)}, status_code=status, headers=error_headers(status, exc))


# ----------------------------------------------------------------------------------------------
# the OpenAPI side: what each error status looks like


class ErrorBody(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"additionalProperties": False})

    error: str = Field(description="what went wrong, naming the field or the limit")


_RETRY_AFTER_HEADER = {"Retry-After": {"description": "seconds to wait before retrying",
                                       "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "the scheme to authenticate with (Bearer)",
                                          "schema": {"type": "string"}}}

#: what each error status means, as documented on the routes
DESCRIPTIONS: dict[int, str] = {
    400: "A malformed remote_write body (not snappy-compressed, not a WriteRequest, invalid labels); a retry "
         "would fail the same way.",
    401: "No credential, or an unknown, revoked, expired or malformed one (send `Authorization: Bearer <key>`).",
    403: "The credential's role or tenant does not allow this request.",
    404: "An unknown model, series, detector family or version.",
    409: "Not possible in the model's current state (no challenger, no earlier champion, a version the gate "
         "rejected).",
    413: f"The body is over {LIMITS.max_body_bytes} bytes (or a remote_write body decompresses past its limit, "
         f"or carries too many series or samples).",
    422: "The request is malformed or outside its limits; the message names the field.",
    429: "The caller's quota is used up; retry after `Retry-After` seconds.",
    503: "A dependency (model controller, monitor, stream store, registry) is away or too slow, or the model "
         "cannot serve; retry after `Retry-After` seconds.",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` argument of a route decorator documenting these error statuses, each with the
    :class:`ErrorBody` schema as ``application/json`` (and its headers: ``Retry-After`` on 429/503)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        if status not in DESCRIPTIONS:
            raise ValueError(f"no description of HTTP status {status} (known: {sorted(DESCRIPTIONS)})")
        entry: dict[str, Any] = {"model": ErrorBody, "description": DESCRIPTIONS[status]}
        if status in RETRYABLE:
            entry["headers"] = dict(_RETRY_AFTER_HEADER)
        elif status == 401:
            entry["headers"] = dict(_WWW_AUTHENTICATE)
        out[status] = entry
    return out


# ----------------------------------------------------------------------------------------------
# the middleware


class _TooLarge(Exception):
    pass


def route_template(scope: dict[str, Any]) -> str | None:
    """The route template (``/v1/models/{name}/history``) a request matched, or None: from the
    ``route`` the router put in the scope, else by matching the app's routes."""
    route = scope.get("route")
    path = getattr(route, "path", None) if route is not None else None
    if path is not None:
        return path
    app = scope.get("app")
    routes = getattr(app, "routes", None)
    if not routes:
        return None
    from starlette.routing import Match

    probe = dict(scope)
    for r in routes:
        try:
            match, _ = r.matches(probe)
        except Exception:  # noqa: BLE001 - a route that cannot match this scope
            continue
        if match == Match.FULL:
            return getattr(r, "path", None)
    return None


#: the label of requests that matched no route (so unknown paths add one series, not one per path)
OTHER = "other"


def endpoint_label(scope: dict[str, Any]) -> str | None:
    """The ``endpoint`` label of a request's latency: its ``/v1/...`` route template, ``other`` for a
    path no route matches, None (not measured) for the service routes (``/healthz``, ``/metrics``, docs)."""
    template = route_template(scope)
    if template is None:
        return OTHER
    return template if template.startswith("/v1/") else None


class LimitAndMeasure:
    """Refuse bodies over ``limit`` bytes (413 naming the limit) and time every API request (latency
    histogram by route template, and a ``Server-Timing`` header with ``app``, the time spent in this
    replica). A pure ASGI middleware: Starlette's ``@app.middleware("http")`` costs ~1 ms a request here.

    The limit counts the bytes actually received: a ``Content-Length`` over it is refused before
    reading; otherwise the body (chunked or not, whatever ``Content-Length`` says) is read up to the
    limit and handed to the app, or refused as soon as it passes the limit."""

    def __init__(self, app: Any, limit: int | None = None) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        limit = LIMITS.max_body_bytes if self.limit is None else self.limit
        measured = [False]

        async def timed_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and not measured[0]:
                measured[0] = True
                label = endpoint_label(scope)
                if label is not None:
                    ms = 1000 * (time.perf_counter() - t0)
                    m.REQUEST_LATENCY.labels(label).observe(ms)
                    message["headers"] = [*message.get("headers", []),
                                          (b"server-timing", f"app;dur={ms:.2f}".encode())]
            await send(message)

        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            status, kind = TOO_LARGE
            return await message_response(status, f"body: {int(length)} bytes, at most {limit}", kind)(
                scope, receive, timed_send)
        # read the body, counting what arrives, then replay it to the app
        chunks: list[bytes] = []
        size = 0
        tail: dict[str, Any] | None = None
        while True:
            message = await receive()
            if message["type"] != "http.request":
                tail = message  # the client went away: the app sees it after the body so far
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                status, kind = TOO_LARGE
                return await message_response(status, f"body: more than {limit} bytes, at most {limit}", kind)(
                    scope, receive, timed_send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
        if tail is not None:
            replay.append(tail)

        async def buffered_receive() -> dict[str, Any]:
            return replay.pop(0) if replay else await receive()

        await self.app(scope, buffered_receive, timed_send)


# ----------------------------------------------------------------------------------------------
# wiring an app


def install(app: Any) -> None:
    """Put the EyeNet HTTP edge on a FastAPI app: :class:`LimitAndMeasure` and the exception handlers
    (schema errors 422, EyeNet errors by :data:`STATUS`, HTTP errors such as an unknown path, all as
    ``{"error": message}``)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app.add_middleware(LimitAndMeasure)

    async def bad_request(request: Any, exc: RequestValidationError) -> JSONResponse:
        status, kind = BAD_REQUEST
        return message_response(status, validation_message(list(exc.errors())), kind)

    async def mapped(request: Any, exc: Exception) -> JSONResponse:
        return error_response(exc)

    async def http_error(request: Any, exc: StarletteHTTPException) -> JSONResponse:
        status, message = exc.status_code, str(exc.detail)
        if status == 400:  # a body FastAPI could not read (not UTF-8, not JSON): malformed, like any bad JSON
            status, message = BAD_REQUEST[0], f"body: not a JSON document ({message})"
        kind = "unknown_name" if status == 404 else "bad_input" if status < 500 else "internal"
        m.ERRORS.labels(kind).inc()
        headers = {**error_headers(status), **(exc.headers or {})}
        return JSONResponse({"error": redact(message)}, status_code=status, headers=headers)

    _document_errors(app)
    app.add_exception_handler(RequestValidationError, bad_request)
    app.add_exception_handler(EyenetError, mapped)
    app.add_exception_handler(ValidationError, mapped)
    app.add_exception_handler(StarletteHTTPException, http_error)


def _document_errors(app: Any) -> None:
    """Make the app's OpenAPI document tell the truth about 422: FastAPI documents its own
    ``HTTPValidationError`` body on every route with parameters, but the handlers answer
    :class:`ErrorBody`; replace it (a route that documents 422 itself keeps its own)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        for ops in doc.get("paths", {}).values():
            for op in ops.values():
                for status, resp in (op.get("responses", {}) if isinstance(op, dict) else {}).items():
                    content = resp.get("content", {}) if status[:1] in "45" else {}
                    for media in [k for k, v in content.items() if k != "application/json"
                                  and v.get("schema", {}).get("$ref", "").endswith("/ErrorBody")]:
                        # a route answering text/plain (/metrics) still answers its errors as JSON
                        content["application/json"] = content.pop(media)
                resp = op.get("responses", {}).get("422") if isinstance(op, dict) else None
                ref = ((resp or {}).get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", ""))
                if ref.endswith("/HTTPValidationError"):
                    op["responses"]["422"] = {"description": DESCRIPTIONS[422], "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
        if "/HTTPValidationError'" not in str(doc["paths"]):  # no route refers to FastAPI's error bodies now
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi
