"""The one map from exceptions to HTTP statuses and error-metric kinds, used by every route.

The Serve ingress (``eyenet.serve.deployments``) registers FastAPI exception
handlers that answer with :func:`error_status` and count ``eyenet_errors_total``
by its kind. The most specific class listed in :data:`STATUS` wins (a
:class:`~eyenet.core.errors.NotEnoughDataError` is an ``InvalidInputError``:
422). Whatever a request got wrong is a 4xx; a 5xx means the service could not
answer (a dependency away, a model that would not load) and is always 503, so
clients retry it. Exceptions outside the EyeNet family are not handled here:
they are bugs, and Starlette answers them 500.
"""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from eyenet.core.errors import (
    ArtifactError,
    AuthenticationError,
    PermissionDeniedError,
    EyenetError,
    InvalidInputError,
    InvalidParameterError,
    LifecycleError,
    NotFittedError,
    NotServableError,
    QuotaExceededError,
    QuotaExceededError,
    UnknownNameError,
)
from eyenet.lifecycle.registry import RegistryError
from eyenet.serving.schemas import validation_message

#: exception class -> (HTTP status, ``eyenet_errors_total`` kind)
STATUS: dict[type[BaseException], tuple[int, str]] = {
    AuthenticationError: (401, "unauthenticated"),
    PermissionDeniedError: (403, "forbidden"),
    InvalidInputError: (422, "bad_input"),  # also NotEnoughDataError
    InvalidParameterError: (422, "bad_input"),
    ValidationError: (422, "bad_input"),  # a pydantic model built from request data inside a route
    UnknownNameError: (404, "unknown_name"),
    LifecycleError: (409, "bad_input"),  # also GateRejectedError: not possible in the model's current state
    NotFittedError: (503, "internal"),  # a served model that cannot score: the service's fault, not the request's
    ArtifactError: (503, "internal"),
    NotServableError: (503, "unavailable"),
    QuotaExceededError: (429, "quota"),  # answered with Retry-After: the exception's retry_after_s
    QuotaExceededError: (429, "quota"),  # answered with Retry-After: the exception's retry_after_s
    RegistryError: (503, "registry"),
    EyenetError: (503, "internal"),  # any other error of the family
}

#: the response of a request that fails FastAPI's schema validation (the body, a path or query parameter)
BAD_REQUEST: tuple[int, str] = (422, "bad_input")
#: the response of a body over ``Limits.max_body_bytes``
TOO_LARGE: tuple[int, str] = (413, "bad_input")


def error_status(exc: BaseException) -> tuple[int, str] | None:
    """``(HTTP status, error kind)`` of an exception, or None for one that is not EyeNet's to map."""
    for cls in type(exc).__mro__:
        hit = STATUS.get(cls)
        if hit is not None:
            return hit
    return None


def error_body(exc: BaseException) -> dict[str, Any]:
    """The JSON body of an error response: ``{"error": message}``, the message naming the problem."""
    if isinstance(exc, ValidationError):
        return {"error": validation_message(exc.errors())}
    return {"error": str(exc)}
