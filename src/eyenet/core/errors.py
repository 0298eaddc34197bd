"""One exception family for EyeNet. Each class carries its CLI exit code; the HTTP statuses are
mapped in one place, :mod:`eyenet.serving.http`."""
from __future__ import annotations


class EyenetError(Exception):
    """Base of every error EyeNet raises on purpose. The message names the problem."""

    exit_code: int = 1


class InvalidInputError(EyenetError, ValueError):
    """Input data is malformed: NaN/inf values, wrong shape, unsorted or duplicate timestamps."""

    exit_code = 2


class NotEnoughDataError(InvalidInputError):
    """A series is empty or shorter than what the operation needs."""


class PayloadTooLargeError(InvalidInputError):
    """A request body, or an answer read from another system, is over a size bound (bytes, series or
    samples); the message names the bound."""


class InvalidParameterError(EyenetError, ValueError):
    """A detector or command parameter has a value outside its declared constraints."""

    exit_code = 2


class UnknownNameError(EyenetError, KeyError):
    """An unknown detector family, model, series or corpus file was named."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class NotFittedError(EyenetError, RuntimeError):
    """A detector was asked to score before it was fitted."""

    exit_code = 3


class ArtifactError(EyenetError):
    """A saved model is missing, corrupt, or not in a safe format."""

    exit_code = 4


class LifecycleError(EyenetError):
    """A promote, review or rollback cannot be done in the model's current state (no challenger, no
    earlier champion, a version the gate archived)."""

    exit_code = 6


class GateRejectedError(LifecycleError):
    """The deployment gate rejected a version; the message carries the gate's reason."""


class NotServableError(EyenetError):
    """A model has no version that may serve (its champion failed the controller's serving check)."""

    exit_code = 6


class AuditError(EyenetError):
    """The audit log cannot be written."""

    exit_code = 7



class AuthenticationError(EyenetError):
    """No credential, or one that is unknown, revoked, expired or malformed."""

    exit_code = 8


class PermissionDeniedError(EyenetError):
    """The caller's role or tenant does not allow what it asked for."""

    exit_code = 8


class QuotaExceededError(EyenetError):
    """A tenant is over a quota (requests/s, points/s, live series) or a bounded structure is full
    of busy entries; retry after ``retry_after_s`` seconds (HTTP 429 with ``Retry-After``)."""

    exit_code = 9

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = float(retry_after_s)

    def __reduce__(self):  # noqa: ANN204 - keep retry_after_s across pickling (Ray)
        return (_quota_exceeded, (str(self), self.retry_after_s))


def _quota_exceeded(message: str, retry_after_s: float) -> QuotaExceededError:
    return QuotaExceededError(message, retry_after_s=retry_after_s)


class UnavailableError(EyenetError):
    """A dependency of the service (the stream store, the model controller, the monitor) is away or
    did not answer in time; retry after ``retry_after_s`` seconds (HTTP 503 with ``Retry-After``)."""

    exit_code = 6

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def exit_code_for(exc: BaseException) -> int:
    """CLI exit code for an exception (1 for anything not in the family)."""
    return exc.exit_code if isinstance(exc, EyenetError) else 1

