"""Prometheus in the core layer: remote_write bodies, staleness, series names, selectors, times,
``query_range`` against a real Prometheus, and ``eyenet train --prometheus``. No Ray."""
from __future__ import annotations

import time

import cramjam
import numpy as np
import pytest
import requests

from eyenet import cli
from eyenet.core import prometheus as prom
from eyenet.core.errors import (
    InvalidInputError,
    InvalidParameterError,
    NotEnoughDataError,
    PayloadTooLargeError,
    UnavailableError,
)

STALE = np.array([prom.STALE_NAN_BITS], dtype=np.uint64).view(np.float64)[0]
METRIC = "eyenet_test_latency_seconds"
STEP_S = 15
STEPS = 480  # two hours of 15 s samples, 481 of them
GAP = (200, 280)  # sample indexes missing from path="/y" (a stale marker at the first)
PLAIN_NAN = 100  # a NaN sample of path="/x"


def _bits(x: np.ndarray) -> list[int]:
    return np.asarray(x, dtype=np.float64).view(np.uint64).tolist()


def _raw_body(*series_labels: list[tuple[str, str]]) -> bytes:
    """A compressed WriteRequest with labels exactly as given (repeats and order kept), one sample each."""
    request = prom.WriteRequest()
    for labels in series_labels:
        ts = request.timeseries.add()
        for name, value in labels:
            ts.labels.add(name=name, value=value)
        ts.samples.add(value=1.0, timestamp=1000)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


# -- remote_write bodies --------------------------------------------------------------------------------
def test_encode_then_decode_gives_the_series_back_bit_for_bit() -> None:
    a = prom.RemoteSeries({"__name__": "http_requests_total", "job": "api", "path": "/x"},
                          np.array([1000, 2000, 3000], dtype=np.int64), np.array([1.5, np.nan, STALE]))
    b = ({"__name__": "up", "instance": "h:9100"}, [5000], [1.0])  # a plain tuple works as well
    out = prom.decode_write(prom.encode_write([a, b]), max_bytes=10_000)
    assert [s.labels for s in out] == [a.labels, b[0]]
    assert out[0].timestamps_ms.dtype == np.int64 and out[0].timestamps_ms.tolist() == [1000, 2000, 3000]
    assert out[0].values.dtype == np.float64 and _bits(out[0].values) == _bits(a.values)
    assert out[1].timestamps_ms.tolist() == [5000] and out[1].values.tolist() == [1.0]


def test_labels_are_written_sorted_and_empty_values_are_absent() -> None:
    body = prom.encode_write([({"z": "1", "__name__": "m", "a": "", "b": "2"}, [1], [0.0])])
    request = prom.WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(body)))
    assert [label.name for label in request.timeseries[0].labels] == ["__name__", "a", "b", "z"]
    assert prom.decode_write(body, max_bytes=1000)[0].labels == {"__name__": "m", "b": "2", "z": "1"}


def test_encode_refuses_timestamps_and_values_of_different_lengths() -> None:
    with pytest.raises(InvalidInputError, match=r'up\{job="a"\}: \(2,\) timestamps but \(1,\) values'):
        prom.encode_write([({"__name__": "up", "job": "a"}, [1, 2], [1.0])])


def test_stale_markers_are_told_from_plain_nans() -> None:
    values = np.array([1.0, np.nan, STALE, -np.nan, np.inf, STALE])
    assert prom.is_stale(values).tolist() == [False, False, True, False, False, True]
    assert prom.is_stale([]).tolist() == []
    assert prom.is_stale(values[::2]).tolist() == [False, True, False]  # a strided view


@pytest.mark.parametrize("labels, problem", [
    ([("job", "api")], "series 0 has no metric name (label __name__)"),
    ([("__name__", ""), ("job", "api")], "series 0 has no metric name"),
    ([("__name__", "up"), ("", "x")], "series 0 has a label with an empty name"),
    ([("__name__", "up"), ("1job", "x")], "series 0 has an invalid label name '1job'"),
    ([("__name__", "up"), ("job-name", "x")], "invalid label name 'job-name'"),
    ([("__name__", "up"), ("job", "a"), ("job", "b")], "series 0 has the label 'job' twice"),
    ([("__name__", "1up")], "series 0 has an invalid metric name '1up'"),
])
def test_bad_labels_are_refused_naming_the_problem(labels, problem) -> None:
    with pytest.raises(InvalidInputError, match="^remote_write body: ") as err:
        prom.decode_write(_raw_body([("__name__", "fine")], labels), max_bytes=10_000)
    assert problem.replace("series 0", "series 1") in str(err.value)
    assert type(err.value) is InvalidInputError


def _valid_body() -> bytes:
    return prom.encode_write([({"__name__": "up", "job": f"j{i}"}, np.arange(50) * 1000, np.ones(50))
                              for i in range(4)])


@pytest.mark.parametrize("case, error, message", [
    ("empty", InvalidInputError, "remote_write body: not snappy-compressed"),
    ("truncated", InvalidInputError, "remote_write body: not snappy-compressed"),
    ("uncompressed protobuf", InvalidInputError, "remote_write body: "),
    ("garbage protobuf", InvalidInputError, "remote_write body: not a Prometheus WriteRequest"),
    ("declares 2 GiB", PayloadTooLargeError, "uncompresses to 2147483648 bytes, over the limit of 100000"),
    ("over max_bytes", PayloadTooLargeError, "over the limit of 100000"),
])
def test_malformed_or_oversized_bodies_get_the_right_error(case, error, message) -> None:
    valid = _valid_body()
    body = {
        "empty": b"",
        "truncated": valid[: len(valid) // 2],
        "uncompressed protobuf": bytes(cramjam.snappy.decompress_raw(valid)),
        # field 1 (a TimeSeries) announced 2**28 bytes long, then nothing: a truncated message
        "garbage protobuf": bytes(cramjam.snappy.compress_raw(b"\x0a\x80\x80\x80\x80\x01")),
        # the length header alone: 2**31 as a varint, and no data (must be refused before allocating)
        "declares 2 GiB": b"\x80\x80\x80\x80\x08",
        "over max_bytes": bytes(cramjam.snappy.compress_raw(b"\0" * 100_001)),
    }[case]
    with pytest.raises(error, match=message):
        prom.decode_write(body, max_bytes=100_000)


def test_series_and_sample_bounds() -> None:
    body = _valid_body()  # 4 series of 50 samples
    assert len(prom.decode_write(body, max_bytes=100_000, max_series=4, max_samples=200)) == 4
    with pytest.raises(PayloadTooLargeError, match="remote_write body: 4 series, over the limit of 3"):
        prom.decode_write(body, max_bytes=100_000, max_series=3)
    with pytest.raises(PayloadTooLargeError, match="remote_write body: 200 samples, over the limit of 199"):
        prom.decode_write(body, max_bytes=100_000, max_samples=199)


def test_random_and_mutated_bodies_only_ever_raise_invalid_input() -> None:
    rng = np.random.default_rng(0)
    valid = _valid_body()
    raw = bytes(cramjam.snappy.decompress_raw(valid))
    bodies = [rng.bytes(int(rng.integers(0, 200))) for _ in range(200)]
    for _ in range(200):  # valid snappy around a damaged protobuf, and damaged snappy
        damaged = bytearray(raw)
        for i in rng.integers(0, len(damaged), size=int(rng.integers(1, 8))):
            damaged[i] = int(rng.integers(0, 256))
        bodies.append(bytes(cramjam.snappy.compress_raw(bytes(damaged))))
        flipped = bytearray(valid)
        flipped[int(rng.integers(0, len(flipped)))] ^= 1 << int(rng.integers(0, 8))
        bodies.append(bytes(flipped))
    for body in bodies:
        try:
            prom.decode_write(body, max_bytes=100_000)
        except InvalidInputError as exc:
            assert str(exc).startswith("remote_write body: ")


# -- series names and selectors -------------------------------------------------------------------------
def test_series_id_is_the_promql_name() -> None:
    assert prom.series_id({"path": "/x", "__name__": "http_requests_total", "job": "api"}) == \
        'http_requests_total{job="api",path="/x"}'
    assert prom.series_id({"__name__": "up"}) == "up"
    assert prom.series_id({"job": "api"}) == '{job="api"}'
    assert prom.series_id({}) == "{}"
    assert prom.series_id({"__name__": "m", "v": 'a\\b"c\nd'}) == 'm{v="a\\\\b\\"c\\nd"}'


SERIES = {
    "idle": {"__name__": "node_cpu_seconds_total", "mode": "idle", "job": "node-exporter", "cpu": "0"},
    "user": {"__name__": "node_cpu_seconds_total", "mode": "user", "job": "node-exporter", "cpu": "0"},
    "other": {"__name__": "node_cpu_seconds_total", "mode": "user", "job": "mynode", "cpu": "1"},
    "http": {"__name__": "http_requests_total", "job": "api", "code": "500"},
    "nojob": {"__name__": "up"},
}


@pytest.mark.parametrize("text, matching", [
    ("up", {"nojob"}),
    ("node_cpu_seconds_total", {"idle", "user", "other"}),
    ('node_cpu_seconds_total{mode!="idle",job=~"node.*"}', {"user"}),
    ('{__name__=~"http_.*"}', {"http"}),
    ('{__name__=~"http_"}', set()),  # anchored: a prefix is not a match
    ('{job=~"node"}', set()),
    ('{job=~"node|api"}', {"http"}),  # the alternation is anchored as a whole
    ('{__name__=~".+",job!~".*node.*"}', {"http", "nojob"}),  # a missing label matches as ""
    ('up{job=""}', {"nojob"}),
    ('{code=~"5.."} ', {"http"}),
    (" node_cpu_seconds_total { cpu = '1' , } ", {"other"}),
    (r'{job=~`node-.*`, cpu="0", mode=~"id\\w+"}', {"idle"}),  # "..." unescapes \\ to \: the regex id\w+
    (r'{job=~`node-.*`, cpu="0", mode=~`id\w+`}', {"idle"}),  # `...` is taken as is
    ('{__name__="up",__name__=~"u.*"}', {"nojob"}),
])
def test_selectors_choose_series(text: str, matching: set[str]) -> None:
    selector = prom.parse_selector(text)
    assert {k for k, labels in SERIES.items() if selector.matches(labels)} == matching
    assert str(selector) == text


def test_a_backslash_in_a_regex_is_written_twice_in_quotes() -> None:
    labels = {"__name__": "service_up", "path": r"C:\win"}
    assert prom.parse_selector(r'service_up{path=~"C:\\\\win"}').matches(labels)  # the regex C:\\win
    assert prom.parse_selector(r'service_up{path=~`C:\\win`}').matches(labels)
    # the regex C:\win, where \w is a word character
    assert not prom.parse_selector(r'service_up{path=~"C:\\win"}').matches(labels)


def test_matches_any() -> None:
    selectors = [prom.parse_selector("up"), prom.parse_selector('{code="500"}')]
    assert [prom.matches_any(selectors, labels) for labels in SERIES.values()] == [False, False, False, True, True]
    assert not prom.matches_any([], SERIES["nojob"])


@pytest.mark.parametrize("text, problem", [
    ("", "expected a metric name or '{' at the end"),
    ("{}", "needs a metric name or a matcher that does not match the empty string"),
    ('{job=~".*"}', "needs a metric name or a matcher that does not match the empty string"),
    ('{job!="x"}', "needs a metric name or a matcher that does not match the empty string"),
    ("rate(up[5m])", "unexpected '(' (only series selectors such as up{job=\"api\"}) at character 5"),
    ("up{job}", "expected one of =, !=, =~, !~ at character 7"),
    ('up{job=="x"}', "expected a quoted string at character 8"),
    ("up{job=api}", "expected a quoted string at character 8"),
    ('up{job="api"', "expected ',' or '}' at the end"),
    ('up{job="api" mode="x"}', "expected ',' or '}' at character 14"),
    ('up{,}', "expected a label name at character 4"),
    ('up{1job="x"}', "expected a label name at character 4"),
    ('up{job="x}', 'unterminated string (no closing ") at the end'),
    ('up{job="a\\.b"}', "unknown escape \\. in a string"),
    ('up{job=~"(x"}', "invalid regular expression '(x' (missing ), unterminated subpattern"),
    ('up{__name__="x"}', "metric name given twice"),
    ("1up", "expected a metric name or '{' at character 1"),
    ("up} ", "unexpected '}'"),
])
def test_bad_selectors_name_the_text_and_the_problem(text: str, problem: str) -> None:
    with pytest.raises(InvalidParameterError) as err:
        prom.parse_selector(text)
    assert str(err.value).startswith(f"selector {text!r}: ")
    assert problem in str(err.value)


# -- times ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, seconds", [
    ("now", 1_000_000.0), ("now-2h", 1_000_000.0 - 7200), ("now - 1h30m", 1_000_000.0 - 5400),
    ("now+90s", 1_000_090.0), ("1700000000.5", 1_700_000_000.5), (1_700_000_000, 1_700_000_000.0),
    ("2024-03-04T05:06:07Z", 1_709_528_767.0), ("2024-03-04T06:06:07.250+01:00", 1_709_528_767.25),
    ("2024-03-04T05:06:07", 1_709_528_767.0),  # no offset: UTC
])
def test_parse_time(text, seconds) -> None:
    assert prom.parse_time(text, now=1_000_000.0) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["yesterday", "now-", "now-2x", "now-0s", "nan", "", "2024-13-01T00:00:00Z"])
def test_bad_times_are_refused(text) -> None:
    with pytest.raises(InvalidParameterError, match=f"^start {text!r}: expected an RFC 3339 time"):
        prom.parse_time(text, what="start")


@pytest.mark.parametrize("text, seconds", [("15s", 15), ("1m", 60), ("1h30m", 5400), ("2d", 172800), ("1w", 604800),
                                           ("500ms", 0.5), ("30", 30), (2.5, 2.5)])
def test_parse_duration(text, seconds) -> None:
    assert prom.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "-5", "0s", "1m1h", "15 s", "x", "", "inf", True])
def test_bad_durations_are_refused(text) -> None:
    with pytest.raises(InvalidParameterError, match=f"^step {text!r}: expected a positive duration"):
        prom.parse_duration(text, what="step")


def test_to_series_names_series_and_leaves_non_finite_steps_out() -> None:
    result = [prom.RangeSeries({"__name__": "m", "job": "a"}, np.array([10.0, 20.0, 30.0, 40.0]),
                               np.array([1.0, np.inf, np.nan, 2.0]))]
    (series,) = prom.to_series(result)
    assert series.name == 'm{job="a"}' and series.values.tolist() == [1.0, 2.0]
    assert series.timestamps.tolist() == [10 * 10**9, 40 * 10**9]
    with pytest.raises(NotEnoughDataError, match=r'^m\{job="a"\}: needs at least 3 rows, got 2'):
        prom.to_series(result, min_rows=3)


# -- query_range: refused before asking ------------------------------------------------------------------
def _closed_url() -> str:
    from servers import free_port

    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "127.0.0.1:9090", "http://", "http://h:port", "ftp://h/"])
def test_query_range_wants_an_http_url(url) -> None:
    with pytest.raises(InvalidParameterError, match="expected http://host:port"):
        prom.query_range(url, "up", start="now-1h", end="now", step="15s")


def test_query_range_refuses_too_many_points_and_backward_ranges_before_asking() -> None:
    url = _closed_url()  # nothing listens: any request would be an UnavailableError
    with pytest.raises(InvalidParameterError, match=r"is 11521 points per series, over the limit of 11000; raise"):
        prom.query_range(url, "up", start="now-2d", end="now", step="15s")
    with pytest.raises(InvalidParameterError, match="is 5 points per series, over the limit of 4"):
        prom.query_range(url, "up", start=0, end=60, step="15s", max_points=4)
    with pytest.raises(InvalidParameterError, match="end 'now-2h' is before start 'now-1h'"):
        prom.query_range(url, "up", start="now-1h", end="now-2h", step="15s")


def test_an_unreachable_prometheus_is_unavailable() -> None:
    url = _closed_url()
    with pytest.raises(UnavailableError, match=f"^Prometheus at {url} is unreachable "):
        prom.query_range(url, "up", start="now-1h", end="now", step="15s", timeout_s=5)


def test_credentials_in_the_url_stay_out_of_messages() -> None:
    url = _closed_url()
    with pytest.raises(UnavailableError) as err:
        prom.query_range(url.replace("://", "://admin:s3cret@"), "up", start="now-1h", end="now", step="15s")
    assert str(err.value).startswith(f"Prometheus at {url} is unreachable") and "s3cret" not in str(err.value)


@pytest.fixture
def stub():
    """A loopback HTTP server answering every request with ``.reply`` = (status, body, delay in s);
    ``.seen`` holds the last request's headers and form."""
    import http.server
    import threading
    import urllib.parse

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server name
            form = self.rfile.read(int(self.headers["Content-Length"])).decode()
            server.seen = {"headers": dict(self.headers), "form": dict(urllib.parse.parse_qsl(form))}
            status, body, delay = server.reply
            time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    server.reply = (200, b'{"status":"success","data":{"resultType":"matrix","result":[]}}', 0.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_query_range_posts_the_resolved_range_and_sends_credentials(stub) -> None:
    import base64

    url = stub.url.replace("://", "://ad%40min:s3cret@") + "/prom/"
    assert prom.query_range(url, "up", start=1000, end=1060, step="15s") == []
    assert stub.seen["form"] == {"query": "up", "start": "1000.0", "end": "1060.0", "step": "15.0"}
    assert stub.seen["headers"]["Authorization"] == "Basic " + base64.b64encode(b"ad@min:s3cret").decode()
    prom.query_range(url, "up", start=1000, end=1060, step="15s", headers={"Authorization": "Bearer t"})
    assert stub.seen["headers"]["Authorization"] == "Bearer t"


@pytest.mark.parametrize("reply, error, message", [
    ((503, b'{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}', 0),
     UnavailableError, ": HTTP 503: query timed out in expression evaluation"),
    ((422, b'{"status":"error","errorType":"execution","error":"query processing would load too many samples"}', 0),
     InvalidInputError, " refused the query: query processing would load too many samples"),
    ((200, b"<html>Grafana</html>", 0), InvalidInputError,
     ": HTTP 200 with an answer that is not Prometheus' JSON API"),
    ((200, b'{"status":"success","data":{"resultType":"vector","result":[]}}', 0), InvalidInputError,
     ": the answer holds no range of series"),
    ((200, b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"x"]]}]}}', 0),
     InvalidInputError, ": a series of the answer is malformed"),
    ((200, b"{}", 2.0), UnavailableError, " is unreachable (timed out)"),
])
def test_prometheus_answers_map_to_errors(stub, reply, error, message) -> None:
    stub.reply = reply
    with pytest.raises(error) as err:
        prom.query_range(stub.url, "up", start="now-1h", end="now", step="15s", timeout_s=0.5)
    assert type(err.value) is error and str(err.value).startswith(f"Prometheus at {stub.url}{message}")


# -- query_range against a real Prometheus ---------------------------------------------------------------
@pytest.fixture(scope="module")
def pushed(prometheus):
    """Two series pushed by remote_write: two hours of 15 s samples ending now; path="/x" has one
    NaN sample, path="/y" a stale marker then no samples for 20 minutes. Returns the first sample's
    Unix second."""
    t_end = int(time.time()) // STEP_S * STEP_S
    t0 = t_end - STEPS * STEP_S
    k = np.arange(STEPS + 1)
    ts_ms = (t0 + k * STEP_S) * 1000
    x = 0.2 + 0.01 * np.sin(k / 20.0)
    x[PLAIN_NAN] = np.nan
    y = 0.5 + 0.001 * k
    keep = (k < GAP[0]) | (k >= GAP[1])
    y[GAP[0]] = STALE
    keep[GAP[0]] = True
    body = prom.encode_write([({"__name__": METRIC, "job": "api", "path": "/x"}, ts_ms, x),
                              ({"__name__": METRIC, "job": "api", "path": "/y"}, ts_ms[keep], y[keep])])
    answer = requests.post(f"{prometheus.url}/api/v1/write", data=body, timeout=30, headers={
        "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
        "X-Prometheus-Remote-Write-Version": "0.1.0"})
    assert answer.status_code == 204, answer.text
    assert len(prometheus.query(METRIC, at=t_end)) == 2
    return t0


def _range(prometheus, t0: int, query: str = METRIC, **kw) -> list[prom.RangeSeries]:
    return prom.query_range(prometheus.url, query, start=t0, end=t0 + STEPS * STEP_S, step=f"{STEP_S}s", **kw)


def test_query_range_returns_the_pushed_series_with_the_gap(prometheus, pushed) -> None:
    t0 = pushed
    got = {r.labels["path"]: r for r in _range(prometheus, t0)}
    assert sorted(got) == ["/x", "/y"]
    assert got["/x"].labels == {"__name__": METRIC, "job": "api", "path": "/x"}
    k = np.arange(STEPS + 1)
    assert got["/x"].timestamps_s.tolist() == (t0 + k * STEP_S).astype(float).tolist()
    expected = 0.2 + 0.01 * np.sin(k / 20.0)
    expected[PLAIN_NAN] = np.nan
    np.testing.assert_array_equal(got["/x"].values, expected)  # NaN at the same place, exact floats elsewhere
    present = (k < GAP[0]) | (k >= GAP[1])  # from the stale marker to the next sample: no points
    assert got["/y"].timestamps_s.tolist() == (t0 + k[present] * STEP_S).astype(float).tolist()
    np.testing.assert_allclose(got["/y"].values, 0.5 + 0.001 * k[present])


def test_to_series_leaves_nan_steps_out_and_keeps_gaps(prometheus, pushed) -> None:
    t0 = pushed
    series = {s.name: s for s in prom.to_series(_range(prometheus, t0))}
    x, y = series[f'{METRIC}{{job="api",path="/x"}}'], series[f'{METRIC}{{job="api",path="/y"}}']
    assert len(x) == STEPS and np.isfinite(x.values).all()  # the NaN step is left out
    assert x.timestamps.dtype == np.dtype("datetime64[ns]")
    assert x.timestamps[0] == np.datetime64(t0, "s") and x.timestamps[-1] == np.datetime64(t0 + STEPS * STEP_S, "s")
    assert np.datetime64(t0 + PLAIN_NAN * STEP_S, "s") not in x.timestamps
    assert len(y) == STEPS + 1 - (GAP[1] - GAP[0])
    jump = np.diff(y.timestamps).max()
    assert jump == np.timedelta64((GAP[1] - GAP[0] + 1) * STEP_S, "s")


def test_selectors_pick_among_the_queried_series(prometheus, pushed) -> None:
    selector = prom.parse_selector(f'{METRIC}{{path=~"/y|/z"}}')
    picked = [r.labels["path"] for r in _range(prometheus, pushed) if selector.matches(r.labels)]
    assert picked == ["/y"]


def test_query_range_takes_relative_times(prometheus, pushed) -> None:
    got = prom.query_range(prometheus.url + "/", METRIC, start="now-3h", end="now", step="1m")
    assert sorted(r.labels["path"] for r in got) == ["/x", "/y"]


def test_bad_promql_quotes_prometheus(prometheus) -> None:
    with pytest.raises(InvalidInputError, match=f"^Prometheus at {prometheus.url} refused the query: .*parse error"):
        prom.query_range(prometheus.url, f"rate({METRIC}[5m]", start="now-1h", end="now", step="15s")


def test_answers_over_their_bounds_are_refused(prometheus, pushed) -> None:
    with pytest.raises(PayloadTooLargeError, match=r"returned 2 series, over the limit of 1; narrow it"):
        _range(prometheus, pushed, max_series=1)
    with pytest.raises(PayloadTooLargeError, match="the answer is over 1000 bytes"):
        _range(prometheus, pushed, max_bytes=1000)


def test_prometheus_rejects_what_decode_write_rejects(prometheus) -> None:
    """The same body errors from Prometheus itself: a reference for decode_write's rules."""
    body = _raw_body([("__name__", "ok_metric")], [("job", "no-name")])
    answer = requests.post(f"{prometheus.url}/api/v1/write", data=body, timeout=30,
                           headers={"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"})
    assert answer.status_code == 400
    with pytest.raises(InvalidInputError, match="series 1 has no metric name"):
        prom.decode_write(body, max_bytes=10_000)


# -- eyenet train --prometheus ---------------------------------------------------------------------------
def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def offline_training(monkeypatch, tmp_path):
    """``eyenet train`` without Ray: no cluster, and the per-series Ray tasks replaced by the same fit
    and registration in this process; an embedded MLflow store in a temporary folder."""
    from eyenet.cli import cluster
    from eyenet.lifecycle import registry as reg
    from eyenet.lifecycle import training
    from eyenet.train import trainer

    def train_many(config, series, *, registry, tenant="default", progress=None, source=None):
        return [training.train_and_register(config, np.asarray(s.values), registry=registry, group=reg.slug(s.name),
                                            tenant=tenant, data=training.data_info(s, source)) for s in series]

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EYENET_MLFLOW_URI", raising=False)
    monkeypatch.setattr(cluster, "connect", lambda *a, **kw: None)
    monkeypatch.setattr(trainer, "train_many", train_many)


def test_train_from_prometheus_registers_one_model_per_series(prometheus, pushed, offline_training, capsys) -> None:
    from eyenet.lifecycle import registry

    t0 = pushed
    code, out, err = _run(capsys, "train", "--detector", "zscore", "--prometheus", prometheus.url, "--query", METRIC,
                          "--start", str(t0), "--end", str(t0 + STEPS * STEP_S), "--step", "15s")
    assert code == 0, err
    groups = {"/x": "eyenet_test_latency_seconds-job-api-path-x", "/y": "eyenet_test_latency_seconds-job-api-path-y"}
    reg = registry.Registry()
    for path, group in groups.items():
        name = f"default.{group}.zscore"
        assert name in out
        record = reg.data_record(name, reg.version(name, alias="challenger").version)
        assert record["series"] == f'{METRIC}{{job="api",path="{path}"}}'
        assert record["rows"] == (STEPS if path == "/x" else STEPS + 1 - (GAP[1] - GAP[0]))
        assert record["source"] == {"kind": "prometheus", "url": prometheus.url, "query": METRIC,
                                    "start": float(t0), "end": float(t0 + STEPS * STEP_S), "step": 15.0}


def test_train_with_group_needs_one_series(prometheus, pushed, offline_training, capsys) -> None:
    code, out, err = _run(capsys, "train", "--detector", "zscore", "--prometheus", prometheus.url, "--query", METRIC,
                          "--start", "now-3h", "--group", "web")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "--group names one series group, but the input holds 2 series" in err


@pytest.mark.parametrize("extra, code, message", [
    (["--query", f"rate({METRIC}[5m]"], 2, "refused the query: 1:"),
    (["--query", "eyenet_no_such_metric"], 2, "'eyenet_no_such_metric' returned no series from now-7d to now"),
    (["--query", METRIC, "--start", "now-30d", "--step", "15s"], 2, "over the limit of 11000"),
    (["--query", METRIC, "--start", "last week"], 2, "--start 'last week': expected an RFC 3339 time"),
    ([], 2, "--prometheus needs --query PROMQL"),
])
def test_train_from_prometheus_errors_are_one_line(prometheus, offline_training, capsys, extra, code, message) -> None:
    got, out, err = _run(capsys, "train", "--detector", "zscore", "--prometheus", prometheus.url, *extra)
    assert (got, out) == (code, "")
    assert err.startswith("eyenet: error: ") and message in err and err.count("\n") == 1


def test_train_from_an_unreachable_prometheus_is_one_line(offline_training, capsys) -> None:
    url = _closed_url()
    code, out, err = _run(capsys, "train", "--detector", "zscore", "--prometheus", url, "--query", "up")
    assert code == UnavailableError.exit_code and out == ""
    assert err.startswith(f"eyenet: error: Prometheus at {url} is unreachable") and err.count("\n") == 1


def test_prometheus_options_need_prometheus(offline_training, capsys) -> None:
    code, _, err = _run(capsys, "train", "--detector", "zscore", "--query", "up")
    assert code == 2 and "--query, --start, --end and --step read from --prometheus URL" in err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--prometheus", "http://127.0.0.1:9090", "--input", "x.csv"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_train_sends_the_token_from_the_environment_and_never_prints_it(offline_training, capsys,
                                                                        monkeypatch) -> None:
    seen = {}

    def query_range(url, query, **kw):
        seen.update(kw)
        return []

    monkeypatch.setenv("EYENET_PROMETHEUS_TOKEN", "s3cret-token")
    monkeypatch.setattr(prom, "query_range", query_range)
    code, out, err = _run(capsys, "train", "--detector", "zscore", "--prometheus", "http://prom:9090", "--query", "up")
    assert code == NotEnoughDataError.exit_code
    assert seen["headers"] == {"Authorization": "Bearer s3cret-token"}
    assert "s3cret" not in out + err


def test_train_refuses_series_that_would_share_a_model_group(offline_training, capsys, monkeypatch) -> None:
    ts, x = np.arange(100.0), np.ones(100)
    answer = [prom.RangeSeries({"__name__": "m", "path": p}, ts, x) for p in ("/x", ".x")]
    monkeypatch.setattr(prom, "query_range", lambda url, query, **kw: answer)
    code, out, err = _run(capsys, "train", "--detector", "zscore", "--prometheus", "http://prom:9090", "--query", "m")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert """series m{path="/x"} and m{path=".x"} would both be model group 'm-path-x'""" in err
