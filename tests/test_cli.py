"""The ``eyenet`` command line: NAB scoring and evaluation, single series, ``up``, and clean errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eyenet import cli
from eyenet.cli import demo
from eyenet.core import detectors, presets
from eyenet.core.errors import UnknownNameError

NAB_ROOT = Path(__file__).resolve().parents[2] / "shared" / "nab"
ROWS = 1000
SPIKES = {"alpha/one.csv": 700, "beta/two.csv": 820}


# -- fixtures ----------------------------------------------------------------------------------
def _timestamps(n: int) -> pd.DatetimeIndex:
    return pd.date_range("2024-03-04", periods=n, freq="5min")


def _series(n: int, spike: int | None, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = 50.0 + 10.0 * np.sin(2 * np.pi * t / 288) + rng.normal(0.0, 1.0, n)
    if spike is not None:
        x[spike] += 25.0
    return x


def _write_series(path: Path, n: int = ROWS, spike: int | None = 700, seed: int = 0) -> Path:
    ts = _timestamps(n).strftime("%Y-%m-%d %H:%M:%S")
    x = _series(n, spike, seed)
    path.write_text("timestamp,value\n" + "".join(f"{t},{v:.6f}\n" for t, v in zip(ts, x)))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two NAB-format files of 1,000 rows, each with one spike inside its one labelled window."""
    root = tmp_path_factory.mktemp("corpus")
    ts = _timestamps(ROWS).strftime("%Y-%m-%d %H:%M:%S")
    labels = {}
    for seed, (key, spike) in enumerate(SPIKES.items()):
        path = root / "data" / key
        path.parent.mkdir(parents=True)
        _write_series(path, spike=spike, seed=seed)
        labels[key] = [[f"{ts[spike - 10]}.000000", f"{ts[spike + 10]}.000000"]]
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(json.dumps(labels))
    return root


@pytest.fixture(scope="module")
def scored(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("results")
    assert cli.main(["score", "--corpus", str(corpus), "--detector", "zscore", "--out", str(out), "--workers", "1"]) == 0
    return out


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _script() -> list[str]:
    """The installed console script next to the running interpreter (or ``python -m eyenet.cli``)."""
    exe = Path(sys.executable).parent / "eyenet"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("eyenet")
    return [found] if found else [sys.executable, "-m", "eyenet.cli"]


def _subprocess(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_script(), *argv], cwd=cwd, capture_output=True, text=True, timeout=120)


# -- presets -----------------------------------------------------------------------------------
def test_model_config_names_the_family_and_validates_through_the_registry() -> None:
    config = presets.model_config("zscore", {"window": 20})
    assert config["detector"] == {"family": "zscore", "params": {"window": 20}}
    with pytest.raises(UnknownNameError):
        presets.model_config("no_such_family")
    assert set(presets.DEFAULT_SUITE) <= set(detectors.available())
    assert 0.0 < presets.alarm_threshold() <= 1.0


# -- score and evaluate a corpus -----------------------------------------------------------------
def test_score_corpus_writes_one_result_file_per_data_file(corpus: Path, scored: Path) -> None:
    for key in SPIKES:
        category, name = key.split("/")
        path = scored / "zscore" / category / f"zscore_{name}"
        assert path.is_file()
        frame = pd.read_csv(path)
        assert list(frame.columns) == ["timestamp", "value", "anomaly_score"]
        assert len(frame) == ROWS
        data = pd.read_csv(corpus / "data" / key)
        assert (frame["timestamp"] == data["timestamp"]).all()
        np.testing.assert_allclose(frame["value"], data["value"])
        s = frame["anomaly_score"].to_numpy()
        assert np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()
        assert s[SPIKES[key]] >= np.quantile(s, 0.99)  # the spike stands out
    assert sorted(p.name for p in (scored / "zscore").rglob("*.csv")) == ["zscore_one.csv", "zscore_two.csv"]


def test_score_corpus_reports_progress_on_stderr_and_a_summary_on_stdout(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(
        capsys, "score", "--corpus", str(corpus), "--detector", "mad", "--name", "robust",
        "--params", '{"window": 32}', "--out", str(tmp_path), "--workers", "1",
    )
    assert code == 0
    assert "[1/2]" in err and "[2/2]" in err
    assert "2 files" in out and "'robust'" in out
    assert (tmp_path / "robust" / "alpha" / "robust_one.csv").is_file()


def test_evaluate_prints_the_three_profiles(corpus: Path, scored: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "evaluate", "--corpus", str(corpus), "--results", str(scored), "--name", "zscore")
    assert code == 0 and err == ""
    for profile in ("standard", "reward_low_fp", "reward_low_fn"):
        assert profile in out
    assert "own threshold" in out and "2 files" in out


def test_evaluate_files_and_json(corpus: Path, scored: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "evaluate", "--corpus", str(corpus), "--results", str(scored), "--name", "zscore", "--files"
    )
    assert code == 0
    assert "alpha/one.csv" in out and "beta/two.csv" in out
    code, out, _ = _run(
        capsys, "evaluate", "--corpus", str(corpus), "--results", str(scored), "--name", "zscore",
        "--json", "--threshold", "0.7",
    )
    assert code == 0
    report = json.loads(out)
    assert set(report["profiles"]) == {"standard", "reward_low_fp", "reward_low_fn"}
    assert report["n_files"] == 2 and report["n_windows"] == 2
    assert report["own_threshold"] == 0.7
    # both spikes sit inside their windows: better than a detector that never fires
    assert report["profiles"]["standard"]["score"] > 0


def test_evaluate_missing_results_is_one_line(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "evaluate", "--corpus", str(corpus), "--results", str(tmp_path), "--name", "nothing")
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and "result file not found" in err


# -- score one series ---------------------------------------------------------------------------
def test_score_input_writes_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _write_series(tmp_path / "metric.csv", spike=800)
    dest = tmp_path / "out" / "scored.csv"
    code, out, _ = _run(capsys, "score", "--input", str(src), "--detector", "zscore", "--train-rows", "400", "--out", str(dest))
    assert code == 0 and "1,000 rows" in out
    frame = pd.read_csv(dest)
    assert list(frame.columns) == ["timestamp", "value", "raw", "calibrated", "score", "alarm"]
    assert len(frame) == ROWS
    assert frame["timestamp"].iloc[0] == "2024-03-04 00:00:00"
    raw = frame["raw"].to_numpy()
    h = detectors.create("zscore").min_history
    assert np.isnan(raw[: h - 1]).all() and np.isfinite(raw[h - 1 :]).all()  # not ready, then ready
    cal = frame["calibrated"].dropna()
    assert ((cal >= 0) & (cal <= 1)).all()
    assert set(frame["alarm"].unique()) <= {0, 1}
    assert frame["raw"].iloc[800] == frame["raw"].max()


def test_score_input_to_stdout_with_train_fraction_and_parquet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ts = _timestamps(600)
    pd.DataFrame({"timestamp": ts, "value": _series(600, 500, 3)}).to_parquet(tmp_path / "m.parquet")
    code, out, err = _run(
        capsys, "score", "--input", str(tmp_path / "m.parquet"), "--detector", "iqr",
        "--params", '{"window": 16}', "--train-fraction", "0.5",
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "timestamp,value,raw,calibrated,score,alarm" and len(lines) == 601
    assert "first 300" in err


# -- bad input: one line on stderr naming the problem, a non-zero exit, no traceback ---------------
def _rows(n: int, start: int = 0) -> list[str]:
    ts = _timestamps(start + n).strftime("%Y-%m-%d %H:%M:%S")[start:]
    return [f"{t},{10 + (i % 7)}" for i, t in enumerate(ts)]


def _csv(lines: list[str]) -> str:
    return "timestamp,value\n" + "\n".join(lines) + "\n"


BAD_FILES = {
    "malformed_csv": (lambda: _csv(_rows(5) + ["2024-03-04 00:25:00,1,2"] + _rows(300, 6)), "malformed"),
    "nan_value": (lambda: _csv(_rows(100) + ["2024-03-04 08:20:00,nan"] + _rows(300, 101)), "NaN"),
    "inf_value": (lambda: _csv(_rows(100) + ["2024-03-04 08:20:00,inf"] + _rows(300, 101)), "infinite"),
    "unsorted_timestamps": (lambda: _csv(_rows(50, 100) + _rows(50) + _rows(300, 150)), "not sorted"),
    "duplicate_timestamps": (lambda: _csv(_rows(200) + _rows(200, 199)), "duplicate"),
    "empty_file": (lambda: "", "empty"),
    "too_short_series": (lambda: _csv(_rows(20)), "at least"),
}


def _assert_one_line_error(code: int, err: str, needle: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("eyenet: error: ")
    assert needle.lower() in lines[0].lower(), lines[0]


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_input_file_is_one_line_error(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make, needle = BAD_FILES[case]
    path = tmp_path / f"{case}.csv"
    path.write_text(make())
    code, out, err = _run(capsys, "score", "--input", str(path), "--detector", "zscore")
    _assert_one_line_error(code, err, needle)
    assert out == ""
    if case != "too_short_series":
        assert str(path) in err  # the message names the file


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--detector", "no_such_detector"], "unknown detector"),
        (["--detector", "zscore", "--params", "{window: 3"], "JSON"),
        (["--detector", "zscore", "--params", "[3]"], "JSON object"),
        (["--detector", "zscore", "--params", '{"bogus": 1}'], "bogus"),
        (["--detector", "zscore", "--params", '{"window": -4}'], "window"),
    ],
    ids=["unknown_detector", "params_not_json", "params_not_object", "unknown_param", "bad_param_value"],
)
def test_bad_detector_or_params_is_one_line_error(
    argv: list[str], needle: str, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "score", "--corpus", str(corpus), "--out", str(tmp_path), *argv)
    _assert_one_line_error(code, err, needle)
    assert code == 2 and out == ""
    assert not any(tmp_path.iterdir())  # nothing written


def test_corpus_without_labels_file_is_one_line_error(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(corpus / "data", broken / "data")
    code, _, err = _run(capsys, "score", "--corpus", str(broken), "--detector", "zscore", "--out", str(tmp_path / "r"))
    _assert_one_line_error(code, err, "labels")
    code, _, err = _run(capsys, "evaluate", "--corpus", str(broken), "--results", str(tmp_path / "r"), "--name", "zscore")
    _assert_one_line_error(code, err, "labels")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        [],
        ["score", "--detector", "zscore"],  # neither --corpus nor --input
        ["score", "--corpus", "x", "--detector", "zscore"],  # --corpus without --out
        ["score", "--input", "x.csv", "--detector", "zscore", "--train-rows", "0"],
        ["evaluate", "--corpus", "x"],
        ["nonsense"],
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_bench_times_stream_steps_and_windows_with_the_tail(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "bench", "--detectors", "zscore,mad", "--calls", "30", "--window", "64", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["model"], r["what"]) for r in rows] == [
        ("zscore", "stream, 1 point"), ("zscore", "window, 64 points"),
        ("mad", "stream, 1 point"), ("mad", "window, 64 points")]
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["points_per_s"] > 0
    assert "bench: zscore" in err


def test_bench_rejects_an_unknown_detector_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "bench", "--detectors", "nope")
    assert code == 2 and out == ""
    assert err.startswith("eyenet: error: ") and "nope" in err and err.count("\n") == 1


def test_detectors_lists_every_family_with_default_params(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "detectors")
    assert code == 0
    lines = out.splitlines()
    names = [line.split()[0] for line in lines if line and not line[0].isspace()]
    assert names == detectors.available()
    for name in names:
        i = next(j for j, line in enumerate(lines) if line.split() and line.split()[0] == name)
        params = lines[i + 1]  # the defaults are on the line below the name
        for key in detectors.get_class(name)().get_params():
            assert f"{key}=" in params, (name, key)


# -- demo --------------------------------------------------------------------------------------------
@pytest.mark.torch
def test_demo_reports_each_detector(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "demo", "--rows", "800", "--detectors", "zscore,iforest,cnn", "--metrics", "cpu_pct,latency_ms")
    assert code == 0
    for family in ("zscore", "iforest", "cnn"):
        assert f"== {family}: detected " in out
        assert f"{family} on cpu_pct" in err  # progress per trained model
    assert out.count("false alarms:") == 3
    summary = out[out.index("Summary"):]
    assert "recall" in summary and "false alarms / 1,000 points" in summary and "fit s" in summary
    for family in ("zscore", "iforest", "cnn"):
        assert family in summary
    assert "epochs" in err  # torch training progress


def test_demo_rejects_unknown_detector_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "demo", "--detectors", "zscore,nope")
    _assert_one_line_error(code, err, "unknown detector")
    assert out == ""


def test_match_alarms_counts_detections_delays_and_false_alarms() -> None:
    from eyenet.core.synthetic import InjectedAnomaly

    alarms = np.zeros(100, dtype=bool)
    alarms[[5, 32, 33, 55, 80]] = True
    anomalies = [InjectedAnomaly("spike", 30, 31), InjectedAnomaly("drift", 50, 54), InjectedAnomaly("dip", 70, 72)]
    found, false = demo.match_alarms(alarms, anomalies, first_row=10, tolerance=3)
    assert [(f.detected, f.delay) for f in found] == [(True, 2), (True, 5), (False, None)]
    assert false.tolist() == [80]  # row 5 is in the training part, 32/33/55 belong to anomalies


# -- the installed console script -------------------------------------------------------------------
def test_console_script_scores_and_evaluates(corpus: Path, tmp_path: Path) -> None:
    res = _subprocess("score", "--corpus", str(corpus), "--detector", "zscore", "--out", "results", "--workers", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert (tmp_path / "results" / "zscore" / "beta" / "zscore_two.csv").is_file()
    res = _subprocess("evaluate", "--corpus", str(corpus), "--results", "results", "--name", "zscore", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "standard" in res.stdout and "reward_low_fn" in res.stdout


def test_console_script_bad_input_has_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text(_csv(_rows(100) + ["2024-03-04 08:20:00,inf"] + _rows(300, 101)))
    res = _subprocess("score", "--input", "bad.csv", "--detector", "zscore", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.startswith("eyenet: error: ") and res.stderr.count("\n") == 1, res.stderr
    help_ = _subprocess("--help", cwd=tmp_path)
    assert help_.returncode == 0
    for command in ("up", "down", "status", "demo", "score", "evaluate", "train", "tune", "models", "bench", "detectors"):
        assert command in help_.stdout


# -- the real NAB corpus ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not (NAB_ROOT / "labels" / "combined_windows.json").is_file(), reason="NAB corpus not present")
def test_real_corpus_scores_and_evaluates_with_zscore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "score", "--corpus", str(NAB_ROOT), "--detector", "zscore", "--out", str(tmp_path), "--workers", "2")
    assert code == 0, err
    n_files = len(list((NAB_ROOT / "data").glob("*/*.csv")))
    assert len(list((tmp_path / "zscore").rglob("zscore_*.csv"))) == n_files
    assert err.count("\n") == n_files  # one progress line per file
    code, out, err = _run(capsys, "evaluate", "--corpus", str(NAB_ROOT), "--results", str(tmp_path), "--name", "zscore", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["n_files"] == n_files
    for profile in report["profiles"].values():
        assert 0.0 < profile["score"] <= 100.0  # better than never firing


# -- train / tune / models: errors before any Ray or MLflow work -------------------------------
def test_train_with_bad_data_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.csv").write_text(_csv(_rows(100) + ["2024-03-04 08:20:00,nan"] + _rows(300, 101)))
    code, out, err = _run(capsys, "train", "--detector", "zscore", "--input", "bad.csv")
    assert code == 2 and out == ""
    assert err.startswith("eyenet: error: bad.csv: column 'value'") and "NaN" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "space, message",
    [('{"windw": {"choice": [1]}}', "'windw' is not a parameter"), ("{not json", "not valid JSON")],
)
def test_tune_with_a_bad_space_is_one_line(space, message, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.json").write_text(space)
    code, out, err = _run(capsys, "tune", "--detector", "zscore", "--space", "space.json")
    assert code == 2 and message in err and err.count("\n") == 1


def test_unreachable_mlflow_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EYENET_MLFLOW_URI", "http://127.0.0.1:9")
    for argv in (["models"], ["train", "--detector", "zscore"]):
        code, out, err = _run(capsys, *argv)
        assert code == 5, err
        assert err.startswith("eyenet: error: MLflow at http://127.0.0.1:9") and err.count("\n") == 1


@pytest.mark.parametrize("argv, problem", [
    (["--labels", "nope"], "missing column(s) 'nope'"),
    (["--labels", "label"], "labelled anomalies both in the first"),
    (["--labels", "bad"], "label 'x' in row 3 is not 1 (anomaly)"),
    (["--feedback", "missing.jsonl"], "--feedback: no feedback file at missing.jsonl"),
    (["--series", "web"], "--series names the series of --feedback"),
])
def test_train_with_bad_labels_is_one_line(argv, problem, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    lines = _rows(400)
    body = "timestamp,value,label,bad\n" + "\n".join(
        f"{row},{int(i in (50, 51))},{'x' if i == 2 else 0}" for i, row in enumerate(lines)) + "\n"
    (tmp_path / "web.csv").write_text(body)
    code, out, err = _run(capsys, "train", "--detector", "zscore", "--input", "web.csv", *argv)
    assert code == 2 and out == "" and problem in err, err
    assert err.count("\n") == 1


def test_train_unknown_detector_is_one_line(capsys) -> None:
    code, _, err = _run(capsys, "train", "--detector", "zscore,nope")
    assert code == 2 and "nope" in err and err.count("\n") == 1


@pytest.mark.parametrize("text, problem", [
    ("quota:\n  tenants:\n    t: {max_inflight: many}\n", "quota.tenants.t.max_inflight: Input should be a valid integer"),
    ("[1, 2]\n", "expected a mapping of app settings"),
    ("quota: {max_inflight_per_tenant: 0}\n", "quota.max_inflight_per_tenant: Input should be greater than or equal to 1"),
    ("nonsense_field: 1\n", "nonsense_field: Extra inputs are not permitted"),
    ("quota: [unclosed\n", "not YAML or JSON"),
])
def test_up_refuses_bad_settings_in_one_line_before_starting_anything(
        text: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "app.yaml"
    path.write_text(text)
    code, out, err = _run(capsys, "up", "--config", str(path))
    assert code == 2 and problem in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / ".eyenet").exists()


def test_up_settings_file_is_read_as_app_config(tmp_path: Path) -> None:
    from eyenet.cli.stack import read_settings

    path = tmp_path / "app.json"
    path.write_text('{"quota": {"max_inflight_per_tenant": 8}, "store": {"flush_s": 0.5}}')
    assert read_settings(str(path)) == {"quota": {"max_inflight_per_tenant": 8}, "store": {"flush_s": 0.5}}
    assert read_settings(None) == {}
