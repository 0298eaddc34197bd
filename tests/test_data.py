"""Loading and validating time series: good files parse, bad ones fail with a message naming the problem."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eyenet.core import data
from eyenet.core.errors import InvalidInputError, NotEnoughDataError

HEADER = "timestamp,value"


def write(tmp_path, text: str, name: str = "s.csv", *, raw: bytes | None = None):
    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(text, newline="")
    return path


def rows(*lines: str, end: str = "\n") -> str:
    return end.join([HEADER, *lines]) + end


GOOD = ("2014-07-01 00:00:00,1", "2014-07-01 00:05:00,2.5", "2014-07-01 00:10:00,-3")


def test_read_csv_good(tmp_path):
    s = data.read_csv(write(tmp_path, rows(*GOOD)))
    assert s.name == "s" and len(s) == 3
    assert s.timestamps.dtype == np.dtype("datetime64[ns]")
    assert s.values.dtype == np.float64
    np.testing.assert_array_equal(s.values, [1.0, 2.5, -3.0])
    assert s.timestamps[1] == np.datetime64("2014-07-01T00:05:00")
    frame = s.to_frame()
    assert list(frame.columns) == ["timestamp", "value"] and len(frame) == 3
    assert not s.values.flags.writeable


def test_crlf_and_missing_final_newline(tmp_path):
    crlf = data.read_csv(write(tmp_path, rows(*GOOD, end="\r\n"), "crlf.csv"))
    no_nl = data.read_csv(write(tmp_path, rows(*GOOD).rstrip("\n"), "nonl.csv"))
    both = data.read_csv(write(tmp_path, rows(*GOOD, end="\r\n").rstrip("\r\n"), "both.csv"))
    for s in (crlf, no_nl, both):
        assert len(s) == 3
        np.testing.assert_array_equal(s.values, [1.0, 2.5, -3.0])
        assert s.timestamps[-1] == np.datetime64("2014-07-01T00:10:00")


def test_utf8_bom_header(tmp_path):
    s = data.read_csv(write(tmp_path, "", raw=b"\xef\xbb\xbf" + rows(*GOOD).encode()))
    assert len(s) == 3


def test_other_column_names(tmp_path):
    text = "time,cpu,other\n2014-07-01 00:00:00,1,x\n2014-07-01 00:01:00,2,y\n"
    s = data.read_csv(write(tmp_path, text), timestamp_col="time", value_col="cpu")
    np.testing.assert_array_equal(s.values, [1.0, 2.0])


@pytest.mark.parametrize(
    "text, error, words",
    [
        (rows("2014-07-01 00:00:00,1", "2014-07-01 00:05:00,2,3", "2014-07-01 00:10:00,4"), InvalidInputError, ["malformed CSV", "line 3 has 3 fields, the header has 2"]),
        (rows("2014-07-01 00:00:00,1,9", "2014-07-01 00:05:00,2,9"), InvalidInputError, ["malformed CSV", "line 2 has 3 fields"]),
        (rows("2014-07-01 00:00:00,1", "2014-07-01 00:05:00"), InvalidInputError, ["malformed CSV", "line 3 has 1 fields"]),
        (rows("2014-07-01 00:00:00,1", "2014-07-01 00:05:00,nan", "2014-07-01 00:10:00,nan"), InvalidInputError, ["'value'", "2 non-finite", "row 1 (line 3)"]),
        (rows("2014-07-01 00:00:00,1", "2014-07-01 00:05:00,inf"), InvalidInputError, ["'value'", "1 non-finite", "infinite", "row 1"]),
        (rows("2014-07-01 00:00:00,-inf", "2014-07-01 00:05:00,1"), InvalidInputError, ["non-finite", "row 0"]),
        (rows("2014-07-01 00:00:00,1", "2014-07-01 00:05:00,"), InvalidInputError, ["non-finite", "missing", "row 1"]),
        (rows("2014-07-01 00:00:00,1", "2014-07-01 00:05:00,abc"), InvalidInputError, ["'value'", "non-numeric", "'abc'", "row 1 (line 3)"]),
        (rows("2014-07-01 00:05:00,1", "2014-07-01 00:00:00,2", "2014-07-01 00:10:00,3"), InvalidInputError, ["'timestamp'", "not sorted", "row 1 (line 3)"]),
        (rows("2014-07-01 00:00:00,1", "2014-07-01 00:05:00,2", "2014-07-01 00:05:00,3"), InvalidInputError, ["duplicate timestamp 2014-07-01 00:05:00", "row 2 (line 4)"]),
        (rows("2014-07-01 00:00:00,1", "yesterday noon,2"), InvalidInputError, ["'timestamp'", "unparseable timestamp 'yesterday noon'", "row 1 (line 3)"]),
        (rows("2014-07-01 00:00:00,1", ",2"), InvalidInputError, ["missing timestamp", "row 1"]),
        (rows("2014-07-01 00:00:00,1"), NotEnoughDataError, ["at least 2 rows", "got 1"]),
        (HEADER + "\n", NotEnoughDataError, ["at least 2 rows", "got 0"]),
        ("", NotEnoughDataError, ["empty file"]),
        ("timestamp,metric\n2014-07-01 00:00:00,1\n2014-07-01 00:05:00,2\n", InvalidInputError, ["missing column", "'value'", "'metric'"]),
    ],
    ids=[
        "malformed", "extra-field-every-row", "short-row", "nan", "inf", "minus-inf", "empty-cell", "not-a-number", "unsorted", "duplicate",
        "bad-timestamp", "missing-timestamp", "too-short", "header-only", "empty-file", "missing-column",
    ],
)
def test_read_csv_rejects(tmp_path, text, error, words):
    path = write(tmp_path, text, "bad.csv")
    with pytest.raises(error) as info:
        data.read_csv(path)
    msg = str(info.value)
    assert "bad.csv" in msg
    for w in words:
        assert w in msg, (w, msg)


def test_quoted_fields_and_blank_lines(tmp_path):
    text = 'timestamp,value,note\n"2014-07-01 00:00:00",1,"a, b"\n\n2014-07-01 00:05:00,2,c\n'
    s = data.read_csv(write(tmp_path, text))
    np.testing.assert_array_equal(s.values, [1.0, 2.0])


def test_not_enough_rows_for_min_rows(tmp_path):
    path = write(tmp_path, rows(*GOOD))
    with pytest.raises(NotEnoughDataError, match="at least 5 rows, got 3"):
        data.read_csv(path, min_rows=5)


def test_missing_file(tmp_path):
    with pytest.raises(InvalidInputError, match="file not found: .*nope.csv"):
        data.read_csv(tmp_path / "nope.csv")


def test_require_increasing_false_keeps_rows_as_recorded(tmp_path):
    text = rows("2014-07-01 00:05:00,1", "2014-07-01 00:05:00,2", "2014-07-01 00:00:00,3")
    s = data.read_csv(write(tmp_path, text), require_increasing=False)
    np.testing.assert_array_equal(s.values, [1.0, 2.0, 3.0])
    with pytest.raises(InvalidInputError, match="non-finite"):
        data.read_csv(write(tmp_path, rows("2014-07-01 00:05:00,nan", "2014-07-01 00:05:00,2"), "n.csv"), require_increasing=False)


# --------------------------------------------------------------------------------------------
# validate_series


def test_validate_series_accepts_many_timestamp_kinds():
    want = np.array(["2024-01-01T00:00:00", "2024-01-01T00:01:00"], dtype="datetime64[ns]")
    for ts in (
        want,
        ["2024-01-01 00:00:00", "2024-01-01 00:01:00"],
        pd.DatetimeIndex(want),
        pd.DatetimeIndex(want).tz_localize("UTC"),
        np.array([1704067200, 1704067260]),  # epoch seconds
        ["2024-01-01T01:00:00+01:00", "2024-01-01T01:01:00+01:00"],  # converted to UTC
    ):
        s = data.validate_series(ts, [1, 2], name="x")
        np.testing.assert_array_equal(s.timestamps, want)


@pytest.mark.parametrize(
    "ts, values, error, words",
    [
        (["2024-01-01", "2024-01-03", "2024-01-02"], [1, 2, 3], InvalidInputError, ["x:", "not sorted", "row 2"]),
        (["2024-01-01", "2024-01-01"], [1, 2], InvalidInputError, ["duplicate timestamp 2024-01-01 00:00:00", "row 1"]),
        (["2024-01-01", "2024-01-02", "2024-01-03"], [1, np.nan, np.inf], InvalidInputError, ["2 non-finite", "row 1"]),
        (["2024-01-01", "2024-01-02"], [1, 2, 3], InvalidInputError, ["2 timestamps but 3 values"]),
        (["2024-01-01"], [1], NotEnoughDataError, ["at least 2 rows, got 1"]),
        ([], [], NotEnoughDataError, ["got 0"]),
        (["2024-01-01", "not a time"], [1, 2], InvalidInputError, ["unparseable timestamp 'not a time'", "row 1"]),
        (["2024-01-01", "2024-01-02"], ["1", "two"], InvalidInputError, ["non-numeric value 'two'", "row 1"]),
        (["2024-01-01", "2024-01-02"], [[1, 2], [3, 4]], InvalidInputError, ["1-D"]),
    ],
    ids=["unsorted", "duplicate", "nan-inf", "length-mismatch", "too-short", "empty", "bad-timestamp", "bad-value", "2-d"],
)
def test_validate_series_rejects(ts, values, error, words):
    with pytest.raises(error) as info:
        data.validate_series(ts, values, name="x")
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_min_rows_zero_allows_empty():
    s = data.validate_series([], [], name="x", min_rows=0)
    assert len(s) == 0 and s.timestamps.dtype == np.dtype("datetime64[ns]")


# --------------------------------------------------------------------------------------------
# Parquet and dispatch


def _frame(n=5):
    return pd.DataFrame(
        {"timestamp": pd.date_range("2024-01-01", periods=n, freq="1min"), "value": np.arange(n, dtype=float) / 3}
    )


def test_parquet_round_trip(tmp_path):
    df = _frame()
    path = tmp_path / "s.parquet"
    df.to_parquet(path, engine="pyarrow", index=False)
    s = data.read_parquet(path)
    np.testing.assert_array_equal(s.values, df["value"].to_numpy())
    np.testing.assert_array_equal(s.timestamps, df["timestamp"].to_numpy().astype("datetime64[ns]"))
    again = tmp_path / "again.pq"
    s.to_frame().to_parquet(again, index=False)
    s2 = data.read_series(again)
    np.testing.assert_array_equal(s2.values, s.values)
    np.testing.assert_array_equal(s2.timestamps, s.timestamps)


def test_parquet_rejects(tmp_path):
    bad = _frame()
    bad.loc[2, "value"] = np.nan
    bad.to_parquet(tmp_path / "nan.parquet", index=False)
    with pytest.raises(InvalidInputError, match=r"nan.parquet: column 'value': 1 non-finite .* row 2"):
        data.read_parquet(tmp_path / "nan.parquet")
    _frame().rename(columns={"value": "v"}).to_parquet(tmp_path / "col.parquet", index=False)
    with pytest.raises(InvalidInputError, match=r"col.parquet: missing column\(s\) 'value'"):
        data.read_parquet(tmp_path / "col.parquet")
    (tmp_path / "junk.parquet").write_text("this is not parquet")
    with pytest.raises(InvalidInputError, match="junk.parquet: not a readable Parquet file"):
        data.read_parquet(tmp_path / "junk.parquet")


def test_read_series_dispatch(tmp_path):
    csv = write(tmp_path, rows(*GOOD), "a.CSV")
    assert len(data.read_series(csv)) == 3
    other = write(tmp_path, rows(*GOOD), "a.txt")
    with pytest.raises(InvalidInputError, match=r"a.txt: unsupported file type '.txt'"):
        data.read_series(other)


# --------------------------------------------------------------------------------------------
# multivariate


def test_read_frame(tmp_path):
    text = "timestamp,cpu,mem\n2024-01-01 00:00:00,1,10\n2024-01-01 00:01:00,2,20\n2024-01-01 00:02:00,3,30\n"
    df = data.read_frame(write(tmp_path, text, "m.csv"))
    assert list(df.columns) == ["cpu", "mem"]
    assert df.index.name == "timestamp" and df.index.is_monotonic_increasing
    assert (df.dtypes == np.float64).all()
    pq = tmp_path / "m.parquet"
    df.reset_index().to_parquet(pq, index=False)
    pd.testing.assert_frame_equal(data.read_frame(pq), df)


@pytest.mark.parametrize(
    "text, words",
    [
        ("timestamp,cpu,mem\n2024-01-01 00:00:00,1,10\n2024-01-01 00:01:00,2,inf\n", ["'mem'", "non-finite", "row 1"]),
        ("timestamp,cpu,host\n2024-01-01 00:00:00,1,a\n2024-01-01 00:01:00,2,b\n", ["'host'", "non-numeric value 'a'", "row 0"]),
        ("timestamp,cpu\n2024-01-01 00:01:00,1\n2024-01-01 00:00:00,2\n", ["'timestamp'", "not sorted"]),
        ("timestamp\n2024-01-01 00:01:00\n2024-01-01 00:02:00\n", ["no value columns"]),
        ("time,cpu\n2024-01-01 00:01:00,1\n2024-01-01 00:02:00,2\n", ["missing column", "'timestamp'"]),
    ],
    ids=["inf", "text-column", "unsorted", "no-metrics", "no-timestamp"],
)
def test_read_frame_rejects(tmp_path, text, words):
    with pytest.raises(InvalidInputError) as info:
        data.read_frame(write(tmp_path, text, "m.csv"))
    assert "m.csv" in str(info.value)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
