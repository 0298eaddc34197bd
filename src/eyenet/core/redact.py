"""Credentials out of URIs: the one function every message, log line and status report that shows
a URI (an MLflow tracking server, a Postgres store) passes it through.

    >>> redact("postgresql://eyenet:s3cret@db:5432/mlflow")
    'postgresql://***@db:5432/mlflow'
    >>> redact("MLflow at http://u:p@mlflow:5000: connecting failed")
    'MLflow at http://***@mlflow:5000: connecting failed'
"""
from __future__ import annotations

import re

#: ``scheme://userinfo@`` anywhere in a text (the userinfo holds no ``/``, ``@`` or whitespace)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s]+)@")
#: secret-looking query parameters: ``?password=...``, ``&token=...``
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|pass|token|access_token|secret|api_key|apikey|key|sslpassword|"
    r"signature|x-amz-signature|x-amz-credential|sig)=)(?P<value>[^&;#\s]+)",
    re.IGNORECASE)

MASK = "***"


def redact(uri: object) -> str:
    """``uri`` (or any text holding URIs) with the user and password of every URI, and secret query
    parameters, replaced by ``***``. ``None`` gives ``""``; anything else is ``str()``-ed first."""
    if uri is None:
        return ""
    text = str(uri)
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group('key')}{MASK}", text)


def redact_all(obj: object) -> object:
    """``obj`` with :func:`redact` applied to every string in it (dicts, lists and tuples walked);
    for status reports whose error texts may quote a URI."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_all(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_all(v) for v in obj)
    return obj
