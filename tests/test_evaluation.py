"""The NAB scorer, pinned to hand-computed cases and to a brute-force threshold scan.

Notation: sig(x) = 2 / (1 + exp(5x)) - 1, so
    sig(-1)  = 2 / (1 + e^-5)   - 1 = 2 / 1.0067379 - 1 = 0.9866143
    sig(-.5) = 2 / (1 + e^-2.5) - 1 = 2 / 1.0820850 - 1 = 0.8482836
    sig(-.1) = 2 / (1 + e^-0.5) - 1 = 2 / 1.6065307 - 1 = 0.2449187
    sig(1/9) = 2 / (1 + e^0.5556) - 1 = 2 / 2.7429873 - 1 = -0.2708471
    sig(1/3) = 2 / (1 + e^1.6667) - 1 = 2 / 6.2944900 - 1 = -0.6822618
    sig(3)   = 2 / (1 + e^15)   - 1 = -0.9999994
Most cases use one file of 60 rows with one window on rows [10, 19] (w = 10).
"""
from __future__ import annotations


import numpy as np
import pytest

from eyenet.core import evaluation as ev
from eyenet.core import nab
from eyenet.core.errors import InvalidInputError

STD = ev.PROFILES["standard"]
N = 60
WIN = [(10, 19)]


def det(*rows: int, n: int = N) -> np.ndarray:
    d = np.zeros(n, dtype=bool)
    d[list(rows)] = True
    return d


def test_sig_values():
    assert ev.sig(0.0) == 0.0
    assert ev.sig(-1.0) == pytest.approx(0.9866143, abs=1e-7)
    assert ev.sig(1 / 3) == pytest.approx(-0.6822618, abs=1e-7)
    assert ev.sig(1000.0) == -1.0  # no overflow
    np.testing.assert_allclose(ev.sig(np.array([-1.0, 0.0])), [0.9866143, 0.0], atol=1e-7)


def test_profiles():
    assert ev.PROFILES["standard"] == ev.Profile(tp=1.0, fp=0.11, fn=1.0)
    assert ev.PROFILES["reward_low_fp"] == ev.Profile(1.0, 0.22, 1.0)
    assert ev.PROFILES["reward_low_fn"] == ev.Profile(1.0, 0.11, 2.0)


def test_left_edge_is_worth_exactly_tp():
    # i = a = 10: p = -(19 - 10 + 1) / 10 = -1, value = TP * sig(-1) / sig(-1) = 1
    assert ev.file_raw_score(det(10), WIN, 0, STD) == pytest.approx(1.0, abs=1e-12)


def test_right_edge():
    # i = b = 19: p = -(19 - 19 + 1) / 10 = -0.1, value = 0.2449187 / 0.9866143 = 0.2482415
    assert ev.file_raw_score(det(19), WIN, 0, STD) == pytest.approx(0.2482415, abs=1e-6)


def test_middle_of_window():
    # i = 15: p = -(19 - 15 + 1) / 10 = -0.5, value = 0.8482836 / 0.9866143 = 0.8597926
    assert ev.file_raw_score(det(15), WIN, 0, STD) == pytest.approx(0.8597926, abs=1e-6)


def test_two_detections_in_a_window_count_once_the_earliest():
    # rows 10 and 15: only row 10 counts (1.0); row 15 costs nothing
    assert ev.file_raw_score(det(10, 15), WIN, 0, STD) == pytest.approx(1.0, abs=1e-12)
    # rows 15 and 19: only row 15 counts (0.8597926)
    assert ev.file_raw_score(det(15, 19), WIN, 0, STD) == pytest.approx(0.8597926, abs=1e-6)


def test_just_after_a_window():
    # i = 22: d = 22 - 19 = 3, d / (w - 1) = 3 / 9 = 1/3, s = sig(1/3) = -0.6822618
    # FP value 0.11 * -0.6822618 = -0.0750488; the window is missed: -1
    assert ev.file_raw_score(det(22), WIN, 0, STD) == pytest.approx(-1.0750488, abs=1e-6)
    # i = 20: d = 1, s = sig(1/9) = -0.2708471, 0.11 * s = -0.0297932; plus the TP at row 10 (1.0)
    assert ev.file_raw_score(det(10, 20), WIN, 0, STD) == pytest.approx(0.9702068, abs=1e-6)


def test_far_after_a_window_is_a_full_false_positive():
    # i = 47: d = 28, 28 / 9 = 3.11 > 3, s = -1: 0.11 * -1 = -0.11, plus the miss -1
    assert ev.file_raw_score(det(47), WIN, 0, STD) == pytest.approx(-1.11, abs=1e-12)
    # i = 46: d = 27, 27 / 9 = 3 (not > 3), s = sig(3) = -0.9999994: -0.1099999, plus the miss -1
    assert ev.file_raw_score(det(46), WIN, 0, STD) == pytest.approx(-1.1099999, abs=1e-7)


def test_before_any_window_is_a_full_false_positive():
    # i = 5: no window precedes it, s = -1: -0.11, plus the miss -1
    assert ev.file_raw_score(det(5), WIN, 0, STD) == pytest.approx(-1.11, abs=1e-12)
    # no windows at all: each detection -0.11
    assert ev.file_raw_score(det(5, 30, 59), [], 0, STD) == pytest.approx(-0.33, abs=1e-12)


def test_width_one_previous_window():
    # previous window (10, 10) has w - 1 = 0: s = -1 for every later false positive
    assert ev.file_raw_score(det(10, 11), [(10, 10)], 0, STD) == pytest.approx(1.0 - 0.11, abs=1e-12)


def test_missed_windows_cost_fn():
    assert ev.file_raw_score(det(), WIN, 0, STD) == -1.0
    assert ev.file_raw_score(det(), [(10, 19), (30, 35)], 0, STD) == -2.0
    # one hit at a left edge (+1), one miss (-1)
    assert ev.file_raw_score(det(30), [(10, 19), (30, 35)], 0, STD) == pytest.approx(0.0, abs=1e-12)


def test_detections_in_probation_are_ignored():
    # probation 12: rows 5 and 10 are not scored, row 15 is the earliest counted detection
    assert ev.file_raw_score(det(5, 10, 15), WIN, 12, STD) == pytest.approx(0.8597926, abs=1e-6)
    # only probation detections: the window is missed, no false positive
    assert ev.file_raw_score(det(5, 10), WIN, 12, STD) == -1.0
    # a window entirely inside probation is always a miss (it still counts toward FN)
    assert ev.file_raw_score(det(5, 30), [(3, 8)], 20, STD) == pytest.approx(-1.0 - 0.11, abs=1e-12)


def test_the_three_profiles():
    # one false positive before the window (s = -1) and one missed window
    d = det(5)
    assert ev.file_raw_score(d, WIN, 0, "standard") == pytest.approx(-0.11 - 1.0)
    assert ev.file_raw_score(d, WIN, 0, "reward_low_fp") == pytest.approx(-0.22 - 1.0)
    assert ev.file_raw_score(d, WIN, 0, "reward_low_fn") == pytest.approx(-0.11 - 2.0)
    # a left-edge hit is worth TP = 1 in every profile
    for name in ev.PROFILES:
        assert ev.file_raw_score(det(10), WIN, 0, name) == pytest.approx(1.0)


def test_normalisation():
    # standard, 3 windows: null = -3, perfect = 3
    assert ev.normalised(-3.0, 3, "standard") == 0.0
    assert ev.normalised(3.0, 3, "standard") == 100.0
    assert ev.normalised(0.0, 3, "standard") == 50.0
    # reward_low_fn, 3 windows: null = -6, perfect = 3; raw 0 -> 100 * 6 / 9
    assert ev.normalised(0.0, 3, "reward_low_fn") == pytest.approx(66.666667, abs=1e-5)
    with pytest.raises(InvalidInputError, match="windows"):
        ev.normalised(0.0, 0, "standard")


def test_null_and_perfect_detectors_score_0_and_100():
    wins = [(10, 19), (30, 39)]
    perfect = np.zeros(N)
    perfect[[10, 30]] = 1.0  # left edges only
    for name in ev.PROFILES:
        t, raw = ev.optimise_threshold([(perfect, wins, 0)], name)
        assert t == 1.0 and raw == pytest.approx(2.0)
        assert ev.normalised(raw, 2, name) == pytest.approx(100.0)
        # a detector that never fires: raw = -FN * 2 -> 0
        raw0 = ev.file_raw_score(np.zeros(N, dtype=bool), wins, 0, name)
        assert raw0 == -ev.PROFILES[name].fn * 2
        assert ev.normalised(raw0, 2, name) == 0.0
    # one window far into a long file, every row scores 0.5: firing everywhere costs
    # 0.11 * 390 false positives > 2 gained on the window, so the optimiser never fires
    s = np.full(400, 0.5)
    t0, raw0 = ev.optimise_threshold([(s, [(200, 209)], 0)], "standard")
    assert t0 > 0.5 and raw0 == -1.0


def test_bad_arguments():
    with pytest.raises(InvalidInputError, match="overlap"):
        ev.file_raw_score(det(), [(10, 19), (15, 25)], 0, STD)
    with pytest.raises(InvalidInputError, match="not within rows"):
        ev.file_raw_score(det(), [(50, 70)], 0, STD)
    with pytest.raises(InvalidInputError, match="unknown NAB profile"):
        ev.file_raw_score(det(), WIN, 0, "nope")
    with pytest.raises(InvalidInputError, match="non-finite score"):
        ev.optimise_threshold([(np.array([0.1, np.nan]), [], 0)], STD)


# ---------------------------------------------------------------------------------------------
# threshold optimiser against a brute-force scan


def _brute_force(files, profile):
    """Best raw score over 'never detect' and every distinct score value (score >= t detects)."""
    null = -profile.fn * sum(len(w) for _, w, _ in files)
    best = null
    for t in np.unique(np.concatenate([s for s, _, _ in files])):
        raw = sum(ev.file_raw_score(s >= t, w, p, profile) for s, w, p in files)
        best = max(best, raw)
    return best


def _random_files(rng, *, ties: bool):
    files = []
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.integers(30, 120))
        scores = rng.random(n)
        if ties:
            scores = np.round(scores, 1)
        wins = []
        row = int(rng.integers(0, 10))
        while True:
            a = row + int(rng.integers(0, 40))
            b = a + int(rng.integers(0, 12))
            if b >= n:
                break
            wins.append((a, b))
            row = b + 1
        files.append((scores, wins, int(rng.integers(0, n // 3))))
    return files


@pytest.mark.parametrize("seed", range(12))
def test_optimise_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    files = _random_files(rng, ties=seed % 2 == 0)
    for name, profile in ev.PROFILES.items():
        t, raw = ev.optimise_threshold(files, profile)
        assert raw == pytest.approx(_brute_force(files, profile), abs=1e-9), name
        # the reported threshold really achieves the reported score
        got = sum(ev.file_raw_score(s >= t, w, p, profile) for s, w, p in files)
        assert got == pytest.approx(raw, abs=1e-9), name
        assert ev.corpus_raw_score(files, t, profile) == pytest.approx(raw, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_corpus_raw_score_matches_file_raw_score(seed):
    rng = np.random.default_rng(100 + seed)
    files = _random_files(rng, ties=True)
    for t in (0.0, 0.3, 0.55, 0.9, 1.5):
        for profile in ev.PROFILES.values():
            want = sum(ev.file_raw_score(s >= t, w, p, profile) for s, w, p in files)
            assert ev.corpus_raw_score(files, t, profile) == pytest.approx(want, abs=1e-9)


def test_optimiser_ties_go_to_the_higher_threshold():
    # rows 10 and 12 both score 0.9; any threshold in (0.2, 0.9] gives the same raw score (+1)
    s = np.full(N, 0.2)
    s[[10, 12]] = 0.9
    t, raw = ev.optimise_threshold([(s, WIN, 0)], STD)
    assert (t, raw) == (0.9, pytest.approx(1.0))


def test_optimiser_without_windows_never_fires():
    s = np.linspace(0, 1, N)
    t, raw = ev.optimise_threshold([(s, [], 0)], STD)
    assert raw == 0.0 and t > 1.0 and not (s >= t).any()


# ---------------------------------------------------------------------------------------------
# reports


def _two_files() -> list:
    # file 0: window [10, 19], left-edge hit (score 1.0) and one false positive far away (score 0.8)
    s0 = np.zeros(N)
    s0[10] = 1.0
    s0[50] = 0.8
    # file 1: window [20, 29] with no score above 0.3, and a 0.6 before it
    s1 = np.zeros(40)
    s1[25] = 0.3
    s1[5] = 0.6
    return [(s0, [(10, 19)], 0), (s1, [(20, 29)], 0)]


def test_score_arrays_report():
    files = _two_files()
    rep = ev.score_arrays(files, own_threshold=0.5, keys=["a.csv", "b.csv"], label="demo")
    std = rep.profiles["standard"]
    # threshold 1.0: +1 (hit) - 1 (miss) = 0 -> 100 * (0 + 2) / 4 = 50
    # threshold 0.8: adds -0.11 (row 50, 31 rows after a width-10 window: s = -1) -> worse
    # threshold 0.3: adds the hit in file 1 at row 25: p = -(29 - 25 + 1) / 10 = -0.5 -> +0.8597926 + 1,
    #   but also -0.11 (row 50) and -0.11 (row 5 of file 1): 0 + 1.8597926 - 0.22 = 1.6397926
    assert std.threshold == 0.3
    assert std.raw == pytest.approx(1.6397926, abs=1e-6)
    assert std.score == pytest.approx(100 * (1.6397926 + 2) / 4, abs=1e-4)
    # own threshold 0.5: hit in file 0 (+1), FPs at rows 50 and 5 (-0.22), miss in file 1 (-1)
    assert std.own_raw == pytest.approx(-0.22)
    assert std.own_score == pytest.approx(100 * (-0.22 + 2) / 4)
    assert rep.n_windows == 2 and rep.n_rows == 100 and rep.n_files == 2
    c0, c1 = rep.files
    assert (c0.key, c0.windows, c0.detections, c0.tp_windows, c0.fp_rows) == ("a.csv", 1, 2, 1, 1)
    assert (c1.key, c1.windows, c1.detections, c1.tp_windows, c1.fp_rows) == ("b.csv", 1, 2, 1, 1)
    table = rep.table()
    for word in ("standard", "reward_low_fp", "reward_low_fn", "score (optimised)", "threshold", "own threshold"):
        assert word in table
    assert rep.to_dict()["profiles"]["standard"]["threshold"] == 0.3


def test_score_arrays_with_an_own_threshold_per_file():
    files = _two_files()
    same = ev.score_arrays(files, own_threshold=[0.5, 0.5]).profiles["standard"]
    assert same.own_raw == ev.score_arrays(files, own_threshold=0.5).profiles["standard"].own_raw
    # file 0 at 0.9 (only the hit), file 1 at 0.25 (the FP at row 5 and the hit at row 25)
    rep = ev.score_arrays(files, own_threshold=[0.9, 0.25])
    assert rep.profiles["standard"].own_raw == pytest.approx(1 + (-0.11 + 0.8597926), abs=1e-6)
    assert rep.own_threshold == [0.9, 0.25] and "own thresholds 0.25-0.9" in rep.table()
    with pytest.raises(InvalidInputError, match="1 own thresholds for 2 files"):
        ev.score_arrays(files, own_threshold=[0.5])
    with pytest.raises(InvalidInputError, match="own_threshold of file 1"):
        ev.score_arrays(files, own_threshold=[0.5, "high"])


def test_score_arrays_without_windows_is_an_error():
    with pytest.raises(InvalidInputError, match="no labelled anomaly windows"):
        ev.score_arrays([(np.zeros(10), [], 0)])


def _write_corpus(root, files):
    import json

    labels = {}
    for key, (ts, values, windows) in files.items():
        path = root / "data" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["timestamp,value"] + [f"{t},{v}" for t, v in zip(ts, values)]
        path.write_text("\n".join(lines) + "\n")
        labels[key] = [[f"{a}.000000", f"{b}.000000"] for a, b in windows]
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "combined_windows.json").write_text(json.dumps(labels))


def test_evaluate_corpus_end_to_end(tmp_path):
    import pandas as pd

    ts = pd.date_range("2020-01-01", periods=100, freq="5min")
    fmt = [t.strftime("%Y-%m-%d %H:%M:%S") for t in ts]
    # window rows [40, 49]; probation = floor(0.15 * 100) = 15
    _write_corpus(tmp_path / "corpus", {"cat/one.csv": (fmt, range(100), [(fmt[40], fmt[49])])})
    corpus = nab.read_corpus(tmp_path / "corpus")
    series = nab.load_file(corpus[0])
    scores = np.zeros(100)
    scores[3] = 1.0  # inside probation: ignored
    scores[40] = 0.9  # left edge: +1
    scores[45] = 0.95  # later in the window: ignored once row 40 detects
    nab.write_result(tmp_path / "results", "det", corpus[0], series.timestamps, series.values, scores)
    rep = ev.evaluate_corpus(tmp_path / "corpus", tmp_path / "results", "det")
    std = rep.profiles["standard"]
    # threshold 0.95 detects row 45: p = -(49 - 45 + 1) / 10 = -0.5 -> 0.8597926
    # threshold 0.9 adds row 40 (left edge): 1.0 -> the best
    assert std.threshold == 0.9 and std.raw == pytest.approx(1.0) and std.score == pytest.approx(100.0)
    assert std.own_score == pytest.approx(100.0)  # own threshold 0.5 detects the same rows
    assert rep.files[0].detections == 2
    assert rep.files[0].fp_rows == 0


def test_leave_one_group_out_chooses_settings_without_the_group_it_scores():
    from eyenet.core.evaluation import leave_one_group_out

    n, probation = 400, 50

    def file(hit_rows, window=(200, 240)):
        s = np.zeros(n)
        s[list(hit_rows)] = 0.9
        return s, [window], probation

    # "steady" finds every window early; "fits-a" is perfect on group a and blind elsewhere, and
    # noisy (a false detection) on b and c: chosen on everything it would not win, but it cannot
    # win group a's own choice unless a is in the choosing set
    steady = [file([205]), file([205]), file([205]), (np.where(np.arange(n) == 300, 0.9, 0.0), [], probation)]
    fits_a = [file([200]), file([100]), file([100]), (np.zeros(n), [], probation)]
    rows = leave_one_group_out({"steady": steady, "fits-a": fits_a}, ["a", "b", "c", "quiet"])
    by = {r.group: r for r in rows}
    assert [r.group for r in rows] == ["a", "b", "c", "quiet"]
    assert all(r.chosen == "steady" for r in rows)
    assert by["a"].held_out["standard"] == pytest.approx(by["a"].in_sample["standard"])
    assert by["a"].held_out["standard"] > 90
    assert by["quiet"].windows == 0 and by["quiet"].held_out["standard"] is None
    assert by["quiet"].false_detections == 1
    # a candidate that wins the whole corpus only through group a is never chosen for group a
    only_a = [file([200]), file([200]), file([200]), file([]), file([])]
    not_a = [file([]), file([]), file([]), file([200]), file([200])]
    rows = {r.group: r for r in leave_one_group_out({"only-a": only_a, "not-a": not_a}, ["a", "a", "a", "b", "c"])}
    assert rows["a"].chosen == "not-a" and rows["a"].held_out["standard"] == pytest.approx(0.0, abs=1e-9)
    assert rows["a"].in_sample["standard"] > 90  # chosen on every group, a included: only-a
    assert rows["b"].chosen == "only-a"  # on a and c, only-a finds three windows of four
    with pytest.raises(Exception, match="group names"):
        leave_one_group_out({"x": steady[:2]}, ["a", "b", "c"])
