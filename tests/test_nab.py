"""NAB-format corpus IO: labels, windows, probation, result files, and the real corpus when present."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eyenet.core import nab
from eyenet.core.errors import InvalidInputError

NAB_ROOT = Path(__file__).resolve().parents[2] / "shared" / "nab"


def make_corpus(root: Path, *, n: int = 50, labels: dict | None = None) -> Path:
    ts = pd.date_range("2020-01-01", periods=n, freq="5min").strftime("%Y-%m-%d %H:%M:%S")
    for key in ("catA/one.csv", "catA/two.csv", "catB/three.csv"):
        path = root / "data" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("timestamp,value\n" + "\n".join(f"{t},{i}" for i, t in enumerate(ts)) + "\n")
    if labels is None:
        labels = {
            "catA/one.csv": [[f"{ts[30]}.000000", f"{ts[34]}.000000"], [f"{ts[10]}.000000", f"{ts[12]}.000000"]],
            "catA/two.csv": [],
            "catZ/gone.csv": [[f"{ts[1]}.000000", f"{ts[2]}.000000"]],  # no data file: ignored
        }
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "combined_windows.json").write_text(json.dumps(labels))
    return root


def test_read_corpus(tmp_path):
    corpus = nab.read_corpus(make_corpus(tmp_path))
    assert [cf.key for cf in corpus] == ["catA/one.csv", "catA/two.csv", "catB/three.csv"]
    one, two, three = corpus
    assert (one.category, one.name, one.path) == ("catA", "one", tmp_path / "data" / "catA" / "one.csv")
    # windows sorted by start, as timestamps
    assert one.windows == [
        (pd.Timestamp("2020-01-01 00:50:00"), pd.Timestamp("2020-01-01 01:00:00")),
        (pd.Timestamp("2020-01-01 02:30:00"), pd.Timestamp("2020-01-01 02:50:00")),
    ]
    assert two.windows == [] and three.windows == []  # three.csv has no labels entry: no windows
    s = nab.load_file(one)
    assert len(s) == 50 and s.name == "one"
    assert nab.window_rows(s.timestamps, one.windows) == [(10, 12), (30, 34)]


def test_missing_labels_file(tmp_path):
    make_corpus(tmp_path)
    (tmp_path / "labels" / "combined_windows.json").unlink()
    with pytest.raises(InvalidInputError, match=r"labels/combined_windows.json not found"):
        nab.read_corpus(tmp_path)


def test_missing_data_dir(tmp_path):
    with pytest.raises(InvalidInputError, match="data directory .* not found"):
        nab.read_corpus(tmp_path)


@pytest.mark.parametrize(
    "content, words",
    [
        ("{not json", ["combined_windows.json", "malformed JSON"]),
        ("[1, 2]", ["expected an object"]),
        (json.dumps({"catA/one.csv": [["2020-01-01 00:00:00"]]}), ["'catA/one.csv'", "window 0", "expected [start, end]"]),
        (json.dumps({"catA/one.csv": [["someday", "2020-01-01 00:00:00"]]}), ["'catA/one.csv'", "unparseable timestamp 'someday'"]),
        (json.dumps({"catA/one.csv": [["2020-01-01 01:00:00", "2020-01-01 00:00:00"]]}), ["end", "before start"]),
        (
            json.dumps({"catA/one.csv": [["2020-01-01 00:00:00", "2020-01-01 01:00:00"], ["2020-01-01 00:30:00", "2020-01-01 02:00:00"]]}),
            ["'catA/one.csv'", "overlap"],
        ),
    ],
    ids=["syntax", "not-object", "not-pair", "bad-time", "reversed", "overlap"],
)
def test_malformed_labels(tmp_path, content, words):
    make_corpus(tmp_path)
    (tmp_path / "labels" / "combined_windows.json").write_text(content)
    with pytest.raises(InvalidInputError) as info:
        nab.read_corpus(tmp_path)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_probation_length():
    assert nab.probation_length(100) == 15
    assert nab.probation_length(4032) == 604  # floor(604.8)
    assert nab.probation_length(5000) == 750
    assert nab.probation_length(22695) == 750  # capped
    assert nab.probation_length(0) == 0
    assert nab.probation_length(100, fraction=0.1, cap=5) == 5


def test_window_rows_between_rows_and_errors():
    ts = pd.date_range("2020-01-01", periods=10, freq="10min").to_numpy()
    # start between rows 2 and 3 -> first row at or after it is 3; end between 5 and 6 -> last row at or before is 5
    w = [(pd.Timestamp("2020-01-01 00:25"), pd.Timestamp("2020-01-01 00:55"))]
    assert nab.window_rows(ts, w) == [(3, 5)]
    assert nab.window_rows(ts, [(ts[0], ts[-1])]) == [(0, 9)]
    with pytest.raises(InvalidInputError, match="contains no row"):
        nab.window_rows(ts, [(pd.Timestamp("2020-01-01 00:21"), pd.Timestamp("2020-01-01 00:29"))])
    with pytest.raises(InvalidInputError, match="contains no row"):
        nab.window_rows(ts, [(pd.Timestamp("2021-01-01"), pd.Timestamp("2021-01-02"))])


def test_window_rows_with_repeated_clock_hour():
    # a clock change repeats 00:10 and 00:20; membership is by timestamp, as in NAB
    ts = pd.to_datetime(["00:00", "00:10", "00:20", "00:10", "00:20", "00:30", "00:40"], format="%H:%M").to_numpy()
    assert nab.window_rows(ts, [(ts[5], ts[6])]) == [(5, 6)]
    with pytest.raises(InvalidInputError, match="interrupted"):
        nab.window_rows(ts, [(ts[2], ts[2])])  # rows 2 and 4, but not 3


def test_result_path_layout(tmp_path):
    cf = nab.read_corpus(make_corpus(tmp_path / "c"))[0]
    assert nab.result_path(tmp_path / "out", "zscore", cf) == tmp_path / "out" / "zscore" / "catA" / "zscore_one.csv"
    with pytest.raises(InvalidInputError, match="invalid result label"):
        nab.result_path(tmp_path / "out", "a/b", cf)


def test_write_read_result_round_trip(tmp_path):
    cf = nab.read_corpus(make_corpus(tmp_path / "c"))[0]
    s = nab.load_file(cf)
    scores = np.linspace(0.0, 1.0, len(s)) ** 3
    path = nab.write_result(tmp_path / "out", "det", cf, s.timestamps, s.values, scores)
    assert path == nab.result_path(tmp_path / "out", "det", cf)
    lines = path.read_text().splitlines()
    assert lines[0] == "timestamp,value,anomaly_score"
    assert lines[1].startswith("2020-01-01 00:00:00,0.0,0.0")
    got = nab.read_result(tmp_path / "out", "det", cf)
    np.testing.assert_array_equal(got, scores)  # exact round trip
    np.testing.assert_array_equal(nab.read_result(tmp_path / "out", "det", cf, series=s), scores)


def test_write_result_rejects_bad_scores(tmp_path):
    cf = nab.read_corpus(make_corpus(tmp_path / "c"))[0]
    s = nab.load_file(cf)
    for bad, words in (
        (np.full(len(s), 1.5), "outside [0, 1]"),
        (np.r_[np.zeros(len(s) - 1), np.nan], "non-finite"),
        (np.zeros(len(s) - 1), "lengths differ"),
    ):
        with pytest.raises(InvalidInputError, match=r"det_one\.csv") as info:
            nab.write_result(tmp_path / "out", "det", cf, s.timestamps, s.values, bad)
        assert words in str(info.value)


def test_read_result_errors(tmp_path):
    cf = nab.read_corpus(make_corpus(tmp_path / "c"))[0]
    s = nab.load_file(cf)
    out = tmp_path / "out"
    with pytest.raises(InvalidInputError, match=r"result file not found: .*det_one\.csv"):
        nab.read_result(out, "det", cf)
    path = nab.write_result(out, "det", cf, s.timestamps, s.values, np.zeros(len(s)))
    text = path.read_text().splitlines()

    path.write_text("\n".join(text[:-1]) + "\n")  # one row short
    with pytest.raises(InvalidInputError, match=r"det_one\.csv: 49 rows but the data file catA/one\.csv has 50"):
        nab.read_result(out, "det", cf)

    path.write_text("\n".join(text[:-1] + [text[-1].rsplit(",", 1)[0] + ",2.0"]) + "\n")
    with pytest.raises(InvalidInputError, match=r"det_one\.csv: 1 anomaly_score value\(s\) outside \[0, 1\], first at row 49"):
        nab.read_result(out, "det", cf)

    path.write_text("\n".join(text[:-1] + [text[-1].rsplit(",", 1)[0] + ",high"]) + "\n")
    with pytest.raises(InvalidInputError, match=r"det_one\.csv: non-numeric anomaly_score 'high' at row 49"):
        nab.read_result(out, "det", cf)

    path.write_text("\n".join(l.rsplit(",", 1)[0] for l in text) + "\n")
    with pytest.raises(InvalidInputError, match=r"det_one\.csv: missing column\(s\) 'anomaly_score'"):
        nab.read_result(out, "det", cf)

    shifted = [text[0]] + [text[2].split(",")[0] + "," + l.split(",", 1)[1] for l in text[1:2]] + text[2:]
    path.write_text("\n".join(shifted) + "\n")
    with pytest.raises(InvalidInputError, match=r"det_one\.csv: timestamp at row 0"):
        nab.read_result(out, "det", cf)

    path.write_text("a,b\n1,2,3\n")
    with pytest.raises(InvalidInputError, match=r"det_one\.csv: malformed CSV"):
        nab.read_result(out, "det", cf)


# --------------------------------------------------------------------------------------------
# the real corpus (skipped when it is not beside the repository)


@pytest.fixture(scope="module")
def real_corpus():
    if not (NAB_ROOT / "data").is_dir():
        pytest.skip(f"NAB corpus not found at {NAB_ROOT}")
    return nab.read_corpus(NAB_ROOT)


def test_real_corpus(real_corpus):
    assert len(real_corpus) == 25
    assert len({cf.category for cf in real_corpus}) == 4
    total_rows = 0
    total_windows = 0
    for cf in real_corpus:
        s = nab.load_file(cf)
        total_rows += len(s)
        rows = nab.window_rows(s.timestamps, cf.windows)
        total_windows += len(rows)
        for (start, end), (a, b) in zip(cf.windows, rows):
            # every window starts and ends exactly on a row's timestamp
            assert s.timestamps[a] == start.to_datetime64(), cf.key
            assert s.timestamps[b] == end.to_datetime64(), cf.key
            assert a <= b
    assert total_rows == 129_577
    assert total_windows == 39
