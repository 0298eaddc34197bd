"""Prometheus in and out: remote_write bodies, series names and selectors, and ``query_range``.

* **remote_write 1.0.** :func:`decode_write` turns a snappy-compressed
  ``prometheus.WriteRequest`` into :class:`RemoteSeries` (labels, int64
  millisecond timestamps, float64 values) and refuses, before any work that
  grows with it, a body over its byte, series or sample bounds;
  :func:`encode_write` makes one. The messages are those of
  ``prompb/types.proto`` and ``prompb/remote.proto``, built at import time from a
  file descriptor (no generated code); exemplars and native histograms are
  not read (protobuf skips their fields).
* **Staleness.** Prometheus ends a series with a NaN of one bit pattern
  (:data:`STALE_NAN_BITS`); :func:`is_stale` tells it from a plain NaN.
* **Names.** :func:`series_id` names a series as PromQL prints it:
  ``http_requests_total{job="api",path="/x"}``.
* **Selectors.** :func:`parse_selector` reads a PromQL series selector
  (``node_cpu_seconds_total{mode!="idle",job=~"node.*"}``) whose
  :meth:`Selector.matches` chooses series. Regular expressions are anchored at
  both ends, as in Prometheus, but run on Python's ``re`` (backtracking, not
  RE2): selectors come from operators, not from request bodies.
* **Training data.** :func:`query_range` reads ``/api/v1/query_range`` (standard
  library HTTP, JSON) within bounds on points, series and bytes;
  :func:`to_series` turns the answer into validated :class:`~eyenet.core.data.Series`.
"""
from __future__ import annotations

import base64
import json
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from http.client import HTTPException
from typing import Any, Union

import cramjam  # python-snappy's engine: snappy block format with a readable length header
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from eyenet.core.data import Series, validate_series
from eyenet.core.errors import (
    InvalidInputError,
    InvalidParameterError,
    PayloadTooLargeError,
    UnavailableError,
)
from eyenet.core.redact import redact

__all__ = [
    "RemoteSeries",
    "RangeSeries",
    "Matcher",
    "Selector",
    "STALE_NAN_BITS",
    "MAX_WRITE_SERIES",
    "MAX_WRITE_SAMPLES",
    "MAX_POINTS",
    "MAX_SERIES",
    "MAX_RESPONSE_BYTES",
    "decode_write",
    "encode_write",
    "is_stale",
    "series_id",
    "parse_selector",
    "matches_any",
    "parse_duration",
    "parse_time",
    "query_range",
    "to_series",
]

#: the bit pattern of Prometheus' staleness marker (``value.StaleNaN``), a NaN that ends a series
STALE_NAN_BITS = 0x7FF0000000000002
#: default bounds of one remote_write request
MAX_WRITE_SERIES = 50_000
MAX_WRITE_SAMPLES = 500_000
#: default bounds of one query_range answer: points per series (Prometheus refuses more than
#: 11,000 steps), series, and bytes of JSON
MAX_POINTS = 11_000
MAX_SERIES = 1_000
MAX_RESPONSE_BYTES = 64 * 2**20

#: Prometheus' name rules (``model.LabelNameRE``, ``model.MetricNameRE``)
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_NAME = "__name__"


# ----------------------------------------------------------------------------------------------
# remote_write messages


def _message(name: str, *fields: tuple[str, int, str, str]) -> descriptor_pb2.DescriptorProto:
    """A message of ``(field name, number, type, label)`` fields; a type starting with ``.`` names a message."""
    F = descriptor_pb2.FieldDescriptorProto
    msg = descriptor_pb2.DescriptorProto(name=name)
    for field_name, number, kind, label in fields:
        f = msg.field.add(name=field_name, number=number, label=getattr(F, f"LABEL_{label}"))
        if kind.startswith("."):
            f.type, f.type_name = F.TYPE_MESSAGE, kind
        else:
            f.type = getattr(F, f"TYPE_{kind}")
    return msg


def _write_request_class() -> Any:
    """The ``prometheus.WriteRequest`` class of prompb's remote.proto / types.proto, in a descriptor
    pool of its own (its fields' messages come with it)."""
    proto = descriptor_pb2.FileDescriptorProto(name="eyenet/prometheus/remote.proto", package="prometheus",
                                               syntax="proto3")
    proto.message_type.extend([
        _message("Sample", ("value", 1, "DOUBLE", "OPTIONAL"), ("timestamp", 2, "INT64", "OPTIONAL")),
        _message("Label", ("name", 1, "STRING", "OPTIONAL"), ("value", 2, "STRING", "OPTIONAL")),
        _message("TimeSeries", ("labels", 1, ".prometheus.Label", "REPEATED"),
                 ("samples", 2, ".prometheus.Sample", "REPEATED")),
        # type is the MetricType enum in prompb; both are a varint on the wire
        _message("MetricMetadata", ("type", 1, "INT32", "OPTIONAL"), ("metric_family_name", 2, "STRING", "OPTIONAL"),
                 ("help", 4, "STRING", "OPTIONAL"), ("unit", 5, "STRING", "OPTIONAL")),
        _message("WriteRequest", ("timeseries", 1, ".prometheus.TimeSeries", "REPEATED"),
                 ("metadata", 3, ".prometheus.MetricMetadata", "REPEATED")),
    ])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("prometheus.WriteRequest"))


#: the ``prometheus.WriteRequest`` message class
WriteRequest = _write_request_class()


@dataclass(frozen=True, eq=False)
class RemoteSeries:
    """One series of a remote_write request: its labels (``__name__`` included, empty values
    dropped), int64 millisecond timestamps and float64 values as sent (stale markers kept)."""

    labels: dict[str, str]
    timestamps_ms: np.ndarray
    values: np.ndarray


SeriesLike = Union[RemoteSeries, tuple[Mapping[str, str], Any, Any]]


def _uncompress(body: bytes, max_bytes: int) -> bytes:
    """The snappy block ``body`` uncompressed, refused before any work when it declares more than ``max_bytes``."""
    try:
        declared = cramjam.snappy.decompress_raw_len(body)
    except cramjam.DecompressionError as exc:
        raise InvalidInputError(f"remote_write body: not snappy-compressed ({exc})") from None
    if declared > max_bytes:
        raise PayloadTooLargeError(
            f"remote_write body: uncompresses to {declared} bytes, over the limit of {max_bytes}")
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as exc:
        raise InvalidInputError(f"remote_write body: not snappy-compressed ({exc})") from None


def _labels(ts: Any, where: str) -> dict[str, str]:
    """Checked labels of a TimeSeries message; those with an empty value are absent, as in Prometheus."""
    labels: dict[str, str] = {}
    for label in ts.labels:
        name = label.name
        if not name:
            raise InvalidInputError(f"remote_write body: {where} has a label with an empty name")
        if not _LABEL_NAME.fullmatch(name):
            raise InvalidInputError(
                f"remote_write body: {where} has an invalid label name {name!r} (expected [a-zA-Z_][a-zA-Z0-9_]*)")
        if name in labels:
            raise InvalidInputError(f"remote_write body: {where} has the label {name!r} twice")
        labels[name] = label.value
    metric = labels.get(_NAME)
    if not metric:
        raise InvalidInputError(f"remote_write body: {where} has no metric name (label {_NAME})")
    if not _METRIC_NAME.fullmatch(metric):
        raise InvalidInputError(
            f"remote_write body: {where} has an invalid metric name {metric!r} (expected [a-zA-Z_:][a-zA-Z0-9_:]*)")
    return {k: v for k, v in labels.items() if v}


def decode_write(body: bytes, *, max_bytes: int, max_series: int = MAX_WRITE_SERIES,
                 max_samples: int = MAX_WRITE_SAMPLES) -> list[RemoteSeries]:
    """The series of a remote_write 1.0 body (snappy block format, ``prometheus.WriteRequest``).

    A body that would uncompress to more than ``max_bytes`` bytes, or holds more than
    ``max_series`` series or ``max_samples`` samples, raises :class:`PayloadTooLargeError`;
    anything malformed (snappy, protobuf, a series without a metric name, an empty, invalid or
    repeated label name) raises :class:`InvalidInputError` naming the problem.
    """
    raw = _uncompress(bytes(body), max_bytes)
    try:
        request = WriteRequest.FromString(raw)
    except DecodeError as exc:
        raise InvalidInputError(f"remote_write body: not a Prometheus WriteRequest ({exc})") from None
    if len(request.timeseries) > max_series:
        raise PayloadTooLargeError(
            f"remote_write body: {len(request.timeseries)} series, over the limit of {max_series}")
    samples = sum(len(ts.samples) for ts in request.timeseries)
    if samples > max_samples:
        raise PayloadTooLargeError(f"remote_write body: {samples} samples, over the limit of {max_samples}")
    out = []
    for i, ts in enumerate(request.timeseries):
        labels = _labels(ts, f"series {i}")
        n = len(ts.samples)
        out.append(RemoteSeries(labels, np.fromiter((s.timestamp for s in ts.samples), np.int64, n),
                                np.fromiter((s.value for s in ts.samples), np.float64, n)))
    return out


def encode_write(series: Iterable[SeriesLike]) -> bytes:
    """A snappy-compressed ``prometheus.WriteRequest`` of ``series``: :class:`RemoteSeries` or
    ``(labels, timestamps_ms, values)`` tuples. Labels are written sorted by name, as the
    protocol asks; values keep their bits (a stale marker stays one)."""
    request = WriteRequest()
    for item in series:
        labels, ts, values = (item.labels, item.timestamps_ms, item.values) if isinstance(item, RemoteSeries) else item
        t = np.asarray(ts, dtype=np.int64)
        x = np.asarray(values, dtype=np.float64)
        if t.ndim != 1 or t.shape != x.shape:
            raise InvalidInputError(f"{series_id(labels)}: {t.shape} timestamps but {x.shape} values")
        out = request.timeseries.add()
        for name in sorted(labels):
            out.labels.add(name=name, value=labels[name])
        for tv, xv in zip(t.tolist(), x.tolist()):
            out.samples.add(value=xv, timestamp=tv)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def is_stale(values: Any) -> np.ndarray:
    """Where ``values`` hold Prometheus' staleness marker (its exact bits: a plain NaN is not stale)."""
    x = np.ascontiguousarray(values, dtype=np.float64)
    return x.view(np.uint64) == np.uint64(STALE_NAN_BITS)


# ----------------------------------------------------------------------------------------------
# names and selectors


def _quote(value: str) -> str:
    """A label value in double quotes, escaped as Prometheus' text format does."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def series_id(labels: Mapping[str, str]) -> str:
    """The PromQL name of a series: the metric name, then the other labels sorted by name in braces
    (``http_requests_total{job="api",path="/x"}``; ``up`` alone; ``{job="api"}`` without a name)."""
    name = labels.get(_NAME, "")
    rest = ",".join(f"{k}={_quote(labels[k])}" for k in sorted(labels) if k != _NAME)
    return f"{name}{{{rest}}}" if rest or not name else name


@dataclass(frozen=True)
class Matcher:
    """One label matcher: ``name`` ``op`` (``=``, ``!=``, ``=~``, ``!~``) ``value``. An absent label
    matches as the empty string, as in Prometheus."""

    name: str
    op: str
    value: str
    regex: re.Pattern[str] | None = None  # the compiled value of =~ and !~

    def matches(self, value: str) -> bool:
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = self.regex is not None and self.regex.fullmatch(value) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class Selector:
    """A parsed series selector: a series matches when every matcher does."""

    text: str
    matchers: tuple[Matcher, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels.get(m.name, "")) for m in self.matchers)

    def __str__(self) -> str:
        return self.text


_OPERATORS = ("=~", "!~", "!=", "=")  # longest first
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "`": "`", "n": "\n", "t": "\t", "r": "\r"}


class _Scanner:
    """Position in a selector's text, and its error messages."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def fail(self, problem: str) -> InvalidParameterError:
        where = f"character {self.pos + 1}" if self.pos < len(self.text) else "the end"
        return InvalidParameterError(f"selector {self.text!r}: {problem} at {where}")

    def skip(self) -> bool:
        """Past white space; whether text is left."""
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1
        return self.pos < len(self.text)

    def at(self, token: str) -> bool:
        self.skip()
        return self.text.startswith(token, self.pos)

    def take(self, token: str) -> bool:
        found = self.at(token)
        if found:
            self.pos += len(token)
        return found

    def name(self, pattern: re.Pattern[str], what: str) -> str:
        self.skip()
        m = pattern.match(self.text, self.pos)
        if m is None:
            raise self.fail(f"expected {what}")
        self.pos = m.end()
        return m.group()

    def operator(self) -> str:
        for op in _OPERATORS:
            if self.take(op):
                return op
        raise self.fail("expected one of =, !=, =~, !~")

    def string(self) -> str:
        """A quoted string: "..." or '...' with \\ escapes, or `...` taken as is."""
        quote = self.text[self.pos] if self.skip() else ""
        if quote not in ('"', "'", "`"):
            raise self.fail("expected a quoted string")
        self.pos += 1
        out = []
        while self.pos < len(self.text) and self.text[self.pos] != quote:
            c = self.text[self.pos]
            if c == "\\" and quote != "`":
                self.pos += 1
                escaped = self.text[self.pos:self.pos + 1]
                if escaped not in _ESCAPES:
                    raise self.fail(f"unknown escape \\{escaped} in a string (write \\\\ for a backslash)")
                c = _ESCAPES[escaped]
            out.append(c)
            self.pos += 1
        if self.pos >= len(self.text):
            raise self.fail(f"unterminated string (no closing {quote})")
        self.pos += 1
        return "".join(out)


def _matcher(sc: _Scanner) -> Matcher:
    name = sc.name(_LABEL_NAME, "a label name")
    op = sc.operator()
    start = sc.pos
    value = sc.string()
    if op in ("=", "!="):
        return Matcher(name, op, value)
    try:
        regex = re.compile(f"(?:{value})")
    except re.error as exc:
        sc.pos = start
        raise sc.fail(f"invalid regular expression {value!r} ({exc})") from None
    return Matcher(name, op, value, regex)


def parse_selector(text: str) -> Selector:
    """Parse a PromQL series selector: ``metric``, ``metric{matchers}`` or ``{matchers}``, each
    matcher ``label op "value"`` with ``op`` one of ``=``, ``!=``, ``=~``, ``!~`` (regular
    expressions match whole values). As in Prometheus, the metric name may be given once, and at
    least one matcher must not match the empty string. A bad selector raises
    :class:`InvalidParameterError` naming it, the problem and where it is."""
    if not isinstance(text, str):
        raise InvalidParameterError(f"selector {text!r}: expected a string")
    sc = _Scanner(text)
    named = not sc.at("{")
    matchers = [Matcher(_NAME, "=", sc.name(_METRIC_NAME, "a metric name or '{'"))] if named else []
    if sc.take("{"):
        while not sc.take("}"):
            matcher = _matcher(sc)
            if named and matcher.name == _NAME:
                raise sc.fail("metric name given twice")
            matchers.append(matcher)
            if not sc.take(",") and not sc.at("}"):
                raise sc.fail("expected ',' or '}'")
    if sc.skip():
        raise sc.fail(f"unexpected {text[sc.pos]!r} (only series selectors such as up{{job=\"api\"}})")
    if all(m.matches("") for m in matchers):
        raise InvalidParameterError(
            f"selector {text!r}: needs a metric name or a matcher that does not match the empty string")
    return Selector(text, tuple(matchers))


def matches_any(selectors: Iterable[Selector], labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` match at least one of ``selectors``."""
    return any(s.matches(labels) for s in selectors)


# ----------------------------------------------------------------------------------------------
# times


_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?")
_DURATION_SECONDS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)
_RELATIVE = re.compile(r"now\s*(?:([+-])\s*(\S+))?")


def _number(text: Any) -> float | None:
    """``text`` as a finite number, or None."""
    if isinstance(text, bool):
        return None
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _seconds(text: str | float) -> float | None:
    """Positive seconds of a duration or a number, or None."""
    seconds = _number(text)
    if seconds is None and isinstance(text, str):
        m = _DURATION.fullmatch(text.strip())
        if m and any(m.groups()):
            seconds = sum(int(g) * unit for g, unit in zip(m.groups(), _DURATION_SECONDS) if g)
    return float(seconds) if seconds is not None and seconds > 0 else None


def parse_duration(text: str | float, *, what: str = "duration") -> float:
    """Seconds of a Prometheus duration (``15s``, ``1m``, ``1h30m``, ``500ms``) or of a number of
    seconds; it must be positive."""
    seconds = _seconds(text)
    if seconds is None:
        raise InvalidParameterError(
            f"{what} {text!r}: expected a positive duration such as 15s, 1m or 1h30m, or a number of seconds")
    return seconds


def parse_time(text: str | float, *, now: float | None = None, what: str = "time") -> float:
    """Unix seconds of an RFC 3339 time (``2024-03-04T05:06:07Z``; without an offset: UTC), of
    Unix seconds, or of ``now`` / ``now-<duration>`` (``now-2h``) relative to ``now`` (default:
    the clock)."""
    seconds = _number(text)
    if seconds is not None:
        return seconds
    t = str(text).strip()
    relative = _RELATIVE.fullmatch(t)
    if relative:
        sign, duration = relative.groups()
        delta = _seconds(duration) if sign else 0.0
        if delta is not None:
            base = time.time() if now is None else now
            return base - delta if sign == "-" else base + delta
    else:
        try:
            parsed = datetime.fromisoformat(t)
        except ValueError:
            parsed = None
        if parsed is not None:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    raise InvalidParameterError(
        f"{what} {text!r}: expected an RFC 3339 time (2024-03-04T05:06:07Z), Unix seconds or now-<duration> (now-2h)")


# ----------------------------------------------------------------------------------------------
# query_range


@dataclass(frozen=True, eq=False)
class RangeSeries:
    """One series of a ``query_range`` answer: labels, float64 Unix-second timestamps and float64
    values (NaN where Prometheus answered NaN; steps without a sample are absent)."""

    labels: dict[str, str]
    timestamps_s: np.ndarray
    values: np.ndarray


def _http_url(url: str) -> tuple[str, dict[str, str]]:
    """An http(s) ``url`` without its user and password and without a trailing slash, and the
    basic-auth header of the user and password it held (none: no header)."""
    try:
        parsed = urllib.parse.urlsplit(str(url))
        valid = parsed.scheme in ("http", "https") and bool(parsed.hostname) and (parsed.port or 0) >= 0
    except ValueError:
        valid = False
    if not valid:
        raise InvalidParameterError(f"Prometheus URL {redact(url)!r}: expected http://host:port or https://...")
    host = parsed.netloc.rpartition("@")[2]
    base = urllib.parse.urlunsplit((parsed.scheme, host, parsed.path.rstrip("/"), parsed.query, ""))
    if parsed.username is None:
        return base, {}
    user = urllib.parse.unquote(parsed.username)
    password = urllib.parse.unquote(parsed.password or "")
    return base, {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _read_bounded(response: Any, max_bytes: int, where: str) -> bytes:
    body = response.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise PayloadTooLargeError(
            f"{where}: the answer is over {max_bytes} bytes; narrow the query, shorten the range or raise the step")
    return body


def _post(url: str, form: dict[str, str], *, timeout_s: float, max_bytes: int, headers: Mapping[str, str],
          where: str) -> tuple[int, bytes]:
    """HTTP status and body of a form POST; an unreachable server raises :class:`UnavailableError`."""
    request = urllib.request.Request(
        url, data=urllib.parse.urlencode(form).encode(), method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, _read_bounded(response, max_bytes, where)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, _read_bounded(exc, max_bytes, where)
    except (urllib.error.URLError, HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UnavailableError(f"{where} is unreachable ({reason})") from None


def _answer(status: int, body: bytes, where: str) -> Any:
    """The ``data`` of a successful API answer; a Prometheus error raises with Prometheus' message."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        snippet = body[:200].decode("utf-8", "replace").strip()
        if status >= 500:
            raise UnavailableError(f"{where}: HTTP {status}: {snippet}")
        raise InvalidInputError(f"{where}: HTTP {status} with an answer that is not Prometheus' JSON API: {snippet!r}")
    if status >= 500:
        raise UnavailableError(f"{where}: HTTP {status}: {doc.get('error', doc)}")
    if status != 200 or doc.get("status") != "success":
        raise InvalidInputError(f"{where} refused the query: {doc.get('error', f'HTTP {status}')}")
    return doc.get("data")


def _range_series(item: Any, where: str) -> RangeSeries:
    try:
        labels = {str(k): str(v) for k, v in item["metric"].items()}
        points = item.get("values") or []
        ts = np.array([p[0] for p in points], dtype=np.float64)
        x = np.array([float(p[1]) for p in points], dtype=np.float64)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"{where}: a series of the answer is malformed ({type(exc).__name__}: {exc})") from None
    return RangeSeries(labels, ts, x)


#: a bearer token for the Prometheus API that training and the gate read (never printed)
TOKEN_ENV = "EYENET_PROMETHEUS_TOKEN"


def token_headers() -> dict[str, str] | None:
    """``Authorization`` for :func:`query_range` from :data:`TOKEN_ENV`, if set."""
    token = os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else None


def query_range(url: str, query: str, *, start: str | float, end: str | float, step: str | float,
                timeout_s: float = 30.0, max_points: int = MAX_POINTS, max_series: int = MAX_SERIES,
                max_bytes: int = MAX_RESPONSE_BYTES, headers: Mapping[str, str] | None = None) -> list[RangeSeries]:
    """The series of PromQL ``query`` from ``start`` to ``end`` every ``step`` (see :func:`parse_time`
    and :func:`parse_duration`), from the Prometheus server at ``url`` (``headers``: e.g. an
    ``Authorization``). A user and password in ``url`` are sent as basic authentication (an
    ``Authorization`` in ``headers`` wins) and never shown.

    A range of more than ``max_points`` steps raises :class:`InvalidParameterError` before asking;
    an answer of more than ``max_series`` series or ``max_bytes`` bytes raises
    :class:`PayloadTooLargeError`; a query Prometheus refuses raises :class:`InvalidInputError`
    quoting Prometheus; a server that cannot be reached, times out or fails raises
    :class:`UnavailableError`.
    """
    base, auth = _http_url(url)
    where = f"Prometheus at {base}"
    now = time.time()
    t0, t1 = parse_time(start, now=now, what="start"), parse_time(end, now=now, what="end")
    dt = parse_duration(step, what="step")
    if t1 < t0:
        raise InvalidParameterError(f"end {end!r} is before start {start!r}")
    points = int((t1 - t0) // dt) + 1
    if points > max_points:
        raise InvalidParameterError(
            f"a range of {t1 - t0:g} s at a step of {dt:g} s is {points} points per series, over the limit of "
            f"{max_points}; raise the step or shorten the range")
    status, body = _post(f"{base}/api/v1/query_range", {"query": query, "start": repr(t0), "end": repr(t1),
                                                       "step": repr(dt)},
                         timeout_s=timeout_s, max_bytes=max_bytes, headers={**auth, **(headers or {})}, where=where)
    data = _answer(status, body, where)
    if not isinstance(data, dict) or data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        raise InvalidInputError(f"{where}: the answer holds no range of series (resultType matrix)")
    result = data["result"]
    if len(result) > max_series:
        raise PayloadTooLargeError(
            f"{where}: {query!r} returned {len(result)} series, over the limit of {max_series}; narrow it with a "
            "label matcher or aggregate it (sum by (...))")
    return [_range_series(item, where) for item in result]


def to_series(result: Iterable[RangeSeries], *, min_rows: int = 2) -> list[Series]:
    """Validated :class:`~eyenet.core.data.Series` of a :func:`query_range` answer, each named by
    :func:`series_id`. Steps without a finite value (NaN, infinities) are left out: in Prometheus
    they mean "no usable sample", like the steps Prometheus itself leaves out, so the timestamps
    keep the gap. A series with fewer than ``min_rows`` such steps raises :class:`NotEnoughDataError`."""
    out = []
    for r in result:
        keep = np.isfinite(r.values)
        ms = np.round(r.timestamps_s[keep] * 1000.0).astype(np.int64)
        out.append(validate_series(ms.astype("datetime64[ms]").astype("datetime64[ns]"), r.values[keep],
                                   name=series_id(r.labels), min_rows=min_rows))
    return out
