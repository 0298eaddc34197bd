"""The NAB scorer: windowed, position-weighted detection scores with profiles.

Rules (per profile with weights TP, FP, FN; ``sig(x) = 2 / (1 + exp(5x)) - 1``):

* rows before the probation period ends (the first 15 % of a file, at most
  750 rows) are never scored;
* a window of rows ``[a, b]`` (width ``w = b - a + 1``) is worth
  ``TP * sig(p) / sig(-1)`` with ``p = -(b - i + 1) / w`` for its earliest
  detection ``i``, and ``-FN`` when nothing in it detects; later detections
  in the same window count for nothing;
* a detection outside every window is worth ``FP * s``: ``s = -1`` when no
  window precedes it, otherwise ``s = sig(d / (w_prev - 1))`` with ``d`` the
  distance in rows to the previous window's right edge, and ``s = -1`` once
  ``d / (w_prev - 1) > 3`` (or when ``w_prev == 1``);
* the corpus raw score is the sum over files; it is normalised as
  ``100 * (raw - null) / (perfect - null)`` with ``null = -FN * windows`` and
  ``perfect = TP * windows``;
* one threshold is used for the whole corpus: a row detects when its score is
  ``>= threshold``. :func:`optimise_threshold` picks the threshold with the
  best raw score among all distinct score values (and "never detect").

Windows are always counted, even when they lie inside the probation period
(where they can only be missed), so that ``null`` and ``perfect`` depend only
on the labels.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from eyenet.core import nab
from eyenet.core.errors import InvalidInputError

__all__ = [
    "Profile",
    "PROFILES",
    "sig",
    "file_raw_score",
    "optimise_threshold",
    "corpus_raw_score",
    "normalised",
    "ProfileScore",
    "FileCounts",
    "Report",
    "score_arrays",
    "evaluate_corpus",
]


@dataclass(frozen=True)
class Profile:
    """Weights of true positives, false positives and false negatives."""

    tp: float
    fp: float
    fn: float


PROFILES: dict[str, Profile] = {
    "standard": Profile(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_fp": Profile(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_fn": Profile(tp=1.0, fp=0.11, fn=2.0),
}

#: (scores, windows as inclusive row ranges, probation rows) for one file
FileArrays = tuple[np.ndarray, Sequence[tuple[int, int]], int]


def sig(x: Any) -> Any:
    """``2 / (1 + exp(5x)) - 1``: 1 far left, 0 at 0, -1 far right (floats or arrays)."""
    if isinstance(x, np.ndarray):
        with np.errstate(over="ignore"):
            return 2.0 / (1.0 + np.exp(5.0 * x)) - 1.0
    try:
        return 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0
    except OverflowError:
        return -1.0


_SIG_M1 = sig(-1.0)


# ----------------------------------------------------------------------------------------------
# validation


def _profile(profile: Profile | str) -> Profile:
    if isinstance(profile, str):
        try:
            return PROFILES[profile]
        except KeyError:
            raise InvalidInputError(f"unknown NAB profile {profile!r} (known: {', '.join(PROFILES)})") from None
    if not isinstance(profile, Profile):
        raise InvalidInputError(f"profile must be a Profile or one of {', '.join(PROFILES)}, got {profile!r}")
    return profile


def _windows(windows: Sequence[tuple[int, int]], n: int, where: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for w in windows:
        try:
            a, b = w
        except (TypeError, ValueError):
            raise InvalidInputError(f"{where}: a window must be a pair (first_row, last_row), got {w!r}") from None
        if isinstance(a, bool) or isinstance(b, bool) or int(a) != a or int(b) != b:
            raise InvalidInputError(f"{where}: window rows must be integers, got {w!r}")
        a, b = int(a), int(b)
        if not 0 <= a <= b < n:
            raise InvalidInputError(f"{where}: window ({a}, {b}) is not within rows 0..{n - 1} with first <= last")
        out.append((a, b))
    out.sort()
    for j in range(1, len(out)):
        if out[j][0] <= out[j - 1][1]:
            raise InvalidInputError(f"{where}: windows {out[j - 1]} and {out[j]} overlap")
    return out


def _probation(probation: Any, where: str) -> int:
    if isinstance(probation, bool) or int(probation) != probation or probation < 0:
        raise InvalidInputError(f"{where}: probation must be a non-negative integer, got {probation!r}")
    return int(probation)


def _scores(scores: Any, where: str) -> np.ndarray:
    try:
        s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{where}: scores must be numeric ({exc})") from None
    if s.ndim != 1:
        raise InvalidInputError(f"{where}: scores must be 1-D, got shape {s.shape}")
    bad = ~np.isfinite(s)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(f"{where}: {int(bad.sum())} non-finite score(s), first at row {i}")
    return s


def _threshold(t: Any, what: str) -> float:
    try:
        v = float(t)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what} must be a number, got {t!r}") from None
    if math.isnan(v):
        raise InvalidInputError(f"{what} must not be NaN")
    return v


# ----------------------------------------------------------------------------------------------
# one file, one set of detections (the plain reading of the rules)


def file_raw_score(
    detections: Any, windows: Sequence[tuple[int, int]], probation: int, profile: Profile | str
) -> float:
    """Raw NAB score of one file for a boolean detection per row."""
    prof = _profile(profile)
    det = np.asarray(detections)
    if det.ndim != 1:
        raise InvalidInputError(f"detections must be 1-D, got shape {det.shape}")
    det = det.astype(bool)
    n = len(det)
    wins = _windows(windows, n, "file_raw_score")
    probation = _probation(probation, "file_raw_score")
    starts = [a for a, _ in wins]
    hit = [False] * len(wins)
    total = 0.0
    for i in np.flatnonzero(det).tolist():
        if i < probation:
            continue
        k = bisect.bisect_right(starts, i) - 1  # last window starting at or before i
        if k >= 0 and i <= wins[k][1]:
            if not hit[k]:  # only the earliest detection of a window counts
                a, b = wins[k]
                w = b - a + 1
                total += prof.tp * sig(-(b - i + 1) / w) / _SIG_M1
                hit[k] = True
            continue
        if k < 0:  # no window precedes this detection
            s = -1.0
        else:
            a, b = wins[k]
            w_prev = b - a + 1
            if w_prev == 1:
                s = -1.0
            else:
                x = (i - b) / (w_prev - 1)
                s = -1.0 if x > 3.0 else sig(x)
        total += prof.fp * s
    total -= prof.fn * sum(1 for h in hit if not h)
    return float(total)


# ----------------------------------------------------------------------------------------------
# threshold sweep


@dataclass
class _FileEvents:
    thresholds: np.ndarray  # a row-set change happens when the threshold falls to this value
    deltas: np.ndarray  # raw-score change at that moment
    n_windows: int


def _fp_values(n: int, wins: list[tuple[int, int]], prof: Profile) -> tuple[np.ndarray, np.ndarray]:
    """Value of a detection at each row outside the windows; returns (value, inside-window mask)."""
    rows = np.arange(n)
    inside = np.zeros(n, dtype=bool)
    if not wins:
        return np.full(n, -prof.fp), inside
    a = np.array([w[0] for w in wins], dtype=np.int64)
    b = np.array([w[1] for w in wins], dtype=np.int64)
    mark = np.zeros(n + 1, dtype=np.int64)
    np.add.at(mark, a, 1)
    np.add.at(mark, b + 1, -1)
    inside = np.cumsum(mark[:n]) > 0
    prev = np.searchsorted(b, rows, side="left") - 1  # last window ending strictly before the row
    has_prev = prev >= 0
    s = np.full(n, -1.0)
    if has_prev.any():
        pi = prev[has_prev]
        w_prev = (b[pi] - a[pi] + 1).astype(np.float64)
        d = (rows[has_prev] - b[pi]).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(w_prev > 1, d / np.maximum(w_prev - 1.0, 1.0), np.inf)
        s[has_prev] = np.where(x > 3.0, -1.0, sig(x))
    return prof.fp * s, inside


def _file_events(scores: np.ndarray, wins: list[tuple[int, int]], probation: int, prof: Profile) -> _FileEvents:
    n = len(scores)
    fp, inside = _fp_values(n, wins, prof)
    scored = np.arange(n) >= probation
    fp_rows = scored & ~inside
    th = [scores[fp_rows]]
    de = [fp[fp_rows]]
    for a, b in wins:
        lo = max(a, probation)
        if lo > b:
            continue  # entirely in probation: always missed
        seg = scores[lo : b + 1]
        # Running prefix-maximum records: as the threshold falls to a record's
        # value, that row becomes the window's earliest detection.
        run = np.maximum.accumulate(seg)
        rec = np.empty(len(seg), dtype=bool)
        rec[0] = True
        rec[1:] = seg[1:] > run[:-1]
        idx = np.flatnonzero(rec)
        w = b - a + 1
        rows = lo + idx
        val = prof.tp * sig(-(b - rows + 1) / w) / _SIG_M1
        # the highest record (last) replaces the miss; each earlier record replaces the next one
        delta = np.empty(len(idx))
        delta[-1] = val[-1] + prof.fn
        delta[:-1] = val[:-1] - val[1:]
        th.append(seg[idx])
        de.append(delta)
    return _FileEvents(np.concatenate(th), np.concatenate(de), len(wins))


def _prepare(files: Sequence[FileArrays], prof: Profile) -> tuple[list[_FileEvents], list[np.ndarray]]:
    events: list[_FileEvents] = []
    scores_list: list[np.ndarray] = []
    for j, item in enumerate(files):
        try:
            scores, windows, probation = item
        except (TypeError, ValueError):
            raise InvalidInputError(f"file {j}: expected (scores, windows, probation), got {type(item).__name__}") from None
        where = f"file {j}"
        s = _scores(scores, where)
        wins = _windows(windows, len(s), where)
        p = _probation(probation, where)
        events.append(_file_events(s, wins, p, prof))
        scores_list.append(s)
    return events, scores_list


def _sweep(events: list[_FileEvents], scores_list: list[np.ndarray], prof: Profile) -> tuple[float, float]:
    n_windows = sum(e.n_windows for e in events)
    null = -prof.fn * n_windows
    top = max((float(s.max()) for s in scores_list if len(s)), default=1.0)
    never = float(np.nextafter(top, np.inf))
    if not events:
        return never, null
    th = np.concatenate([e.thresholds for e in events])
    de = np.concatenate([e.deltas for e in events])
    if len(th) == 0:
        return never, null
    order = np.argsort(-th, kind="stable")
    th = th[order]
    raw = null + np.cumsum(de[order])
    # all events sharing a threshold happen together: keep the last of each tie group
    last = np.ones(len(th), dtype=bool)
    last[:-1] = th[:-1] != th[1:]
    th, raw = th[last], raw[last]
    k = int(np.argmax(raw))  # first maximum = highest threshold among equals
    if raw[k] > null:
        return float(th[k]), float(raw[k])
    return never, float(null)


def optimise_threshold(files: Sequence[FileArrays], profile: Profile | str) -> tuple[float, float]:
    """The corpus threshold with the best raw score, and that score.

    ``files`` holds ``(scores, windows, probation)`` per file, windows as
    inclusive row ranges. Candidates are every distinct score value (a row
    detects when its score is ``>= threshold``) plus "never detect", which is
    reported as a threshold just above the highest score. Ties go to the
    higher threshold. Runs in O(N log N) for N rows.
    """
    prof = _profile(profile)
    events, scores_list = _prepare(files, prof)
    return _sweep(events, scores_list, prof)


def _raw_at(events: list[_FileEvents], threshold: float | Sequence[float], prof: Profile) -> float:
    """The raw score when every row of file ``j`` scoring at least its threshold detects (one
    threshold for all files, or one per file)."""
    n_windows = sum(e.n_windows for e in events)
    total = -prof.fn * n_windows
    each = [threshold] * len(events) if isinstance(threshold, float) else threshold
    for e, t in zip(events, each):
        total += float(e.deltas[e.thresholds >= t].sum())
    return total


def corpus_raw_score(files: Sequence[FileArrays], threshold: float, profile: Profile | str) -> float:
    """Raw corpus score when every row with ``score >= threshold`` detects."""
    prof = _profile(profile)
    t = _threshold(threshold, "threshold")
    events, _ = _prepare(files, prof)
    return _raw_at(events, t, prof)


def normalised(raw: float, n_windows: int, profile: Profile | str) -> float:
    """``100 * (raw - null) / (perfect - null)``: 0 for a detector that never fires, 100 for a perfect one."""
    prof = _profile(profile)
    if n_windows <= 0:
        raise InvalidInputError("the normalised NAB score is undefined without labelled windows (n_windows = 0)")
    null = -prof.fn * n_windows
    perfect = prof.tp * n_windows
    return 100.0 * (raw - null) / (perfect - null)


# ----------------------------------------------------------------------------------------------
# reports


@dataclass(frozen=True)
class ProfileScore:
    """One profile's result: at the optimised threshold and at the detector's own threshold."""

    profile: str
    threshold: float
    raw: float
    score: float
    own_threshold: float | list[float]  # one for every file, or one per file
    own_raw: float
    own_score: float


@dataclass(frozen=True)
class FileCounts:
    """Per-file detection counts at the optimised threshold of the standard profile."""

    key: str
    rows: int
    probation: int
    windows: int
    detections: int
    tp_windows: int
    fp_rows: int


@dataclass(frozen=True)
class Report:
    """NAB scores of one result set."""

    label: str
    n_files: int
    n_rows: int
    n_windows: int
    own_threshold: float | list[float]  # one for every file, or one per file
    profiles: dict[str, ProfileScore]
    files: list[FileCounts] = field(default_factory=list)

    def score(self, profile: str = "standard") -> float:
        """Normalised score at the optimised threshold."""
        if profile not in self.profiles:
            raise InvalidInputError(f"unknown NAB profile {profile!r} (known: {', '.join(self.profiles)})")
        return self.profiles[profile].score

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "n_files": self.n_files,
            "n_rows": self.n_rows,
            "n_windows": self.n_windows,
            "own_threshold": self.own_threshold,
            "profiles": {k: asdict(v) for k, v in self.profiles.items()},
            "files": [asdict(f) for f in self.files],
        }

    def table(self) -> str:
        """The three profiles as a text table."""
        title = f"NAB scores{f' for {self.label!r}' if self.label else ''}: {self.n_files} files, {self.n_rows:,} rows, {self.n_windows} windows"
        own = self.own_threshold
        own_text = f"threshold {own:g}" if isinstance(own, float) else f"thresholds {min(own):.3g}-{max(own):.3g}"
        head = ("profile", "score (optimised)", "threshold", f"score (own {own_text})")
        rows = [
            (p.profile, f"{p.score:.2f}", f"{p.threshold:.6g}", f"{p.own_score:.2f}")
            for p in self.profiles.values()
        ]
        widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]

        def line(r: tuple[str, ...]) -> str:
            return "  ".join(r[c].ljust(widths[c]) if c == 0 else r[c].rjust(widths[c]) for c in range(len(r)))

        out = [title, line(head), "  ".join("-" * w for w in widths)]
        out.extend(line(r) for r in rows)
        return "\n".join(out)

    def files_table(self) -> str:
        """Per-file counts at the optimised standard threshold."""
        head = ("file", "rows", "windows", "tp windows", "detections", "fp rows")
        rows = [
            (f.key, str(f.rows), str(f.windows), str(f.tp_windows), str(f.detections), str(f.fp_rows))
            for f in self.files
        ]
        widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
        lines = []
        for r in [head, *rows]:
            lines.append("  ".join(r[c].ljust(widths[c]) if c == 0 else r[c].rjust(widths[c]) for c in range(len(r))))
        return "\n".join(lines)


def _counts(key: str, scores: np.ndarray, wins: list[tuple[int, int]], probation: int, threshold: float) -> FileCounts:
    n = len(scores)
    det = scores >= threshold
    det[: min(probation, n)] = False
    inside = np.zeros(n, dtype=bool)
    tp = 0
    for a, b in wins:
        inside[a : b + 1] = True
        if det[a : b + 1].any():
            tp += 1
    return FileCounts(
        key=key,
        rows=n,
        probation=probation,
        windows=len(wins),
        detections=int(det.sum()),
        tp_windows=tp,
        fp_rows=int((det & ~inside).sum()),
    )


def score_arrays(
    files: Sequence[FileArrays],
    *,
    own_threshold: float | Sequence[float] = 0.5,
    keys: Sequence[str] | None = None,
    label: str = "",
) -> Report:
    """Evaluate in-memory results: ``(scores, windows as row ranges, probation)`` per file.
    ``own_threshold``: the detector's alarm threshold, for every file or one per file (a model
    fitted on each file has its own, :attr:`eyenet.core.model.AnomalyModel.threshold`)."""
    files = list(files)
    if isinstance(own_threshold, (list, tuple, np.ndarray)):
        if len(own_threshold) != len(files):
            raise InvalidInputError(f"{len(own_threshold)} own thresholds for {len(files)} files")
        own: float | list[float] = [_threshold(t, f"own_threshold of file {j}") for j, t in enumerate(own_threshold)]
    else:
        own = _threshold(own_threshold, "own_threshold")
    if keys is None:
        keys = [f"file {j}" for j in range(len(files))]
    elif len(keys) != len(files):
        raise InvalidInputError(f"{len(keys)} keys for {len(files)} files")
    profiles: dict[str, ProfileScore] = {}
    std_threshold = math.inf
    events0: list[_FileEvents] = []
    scores_list: list[np.ndarray] = []
    for name, prof in PROFILES.items():
        events, scores_list = _prepare(files, prof)
        n_windows = sum(e.n_windows for e in events)
        if n_windows == 0:
            raise InvalidInputError("cannot score: the files have no labelled anomaly windows")
        t, raw = _sweep(events, scores_list, prof)
        own_raw = _raw_at(events, own, prof)
        profiles[name] = ProfileScore(
            profile=name,
            threshold=t,
            raw=raw,
            score=normalised(raw, n_windows, prof),
            own_threshold=own,
            own_raw=own_raw,
            own_score=normalised(own_raw, n_windows, prof),
        )
        if name == "standard":
            std_threshold = t
            events0 = events
    counts = [
        _counts(k, s, _windows(w, len(s), k), _probation(p, k), std_threshold)
        for k, s, (_, w, p) in zip(keys, scores_list, files)
    ]
    return Report(
        label=label,
        n_files=len(files),
        n_rows=sum(len(s) for s in scores_list),
        n_windows=sum(e.n_windows for e in events0),
        own_threshold=own,
        profiles=profiles,
        files=counts,
    )


def evaluate_corpus(
    root: str | Path, results_dir: str | Path, label: str, *, own_threshold: float = 0.5
) -> Report:
    """Score the result files ``results_dir/<label>/...`` of a detector run on the corpus at ``root``."""
    corpus = nab.read_corpus(root)
    files: list[FileArrays] = []
    for cf in corpus:
        series = nab.load_file(cf)
        scores = nab.read_result(results_dir, label, cf, series=series)
        try:
            wins = nab.window_rows(series.timestamps, cf.windows)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{cf.key}: {exc}") from None
        files.append((scores, wins, nab.probation_length(len(series))))
    return score_arrays(files, own_threshold=own_threshold, keys=[cf.key for cf in corpus], label=label)


@dataclass(frozen=True)
class ValidationSeries:
    """One labelled series: learn from ``values[:train_rows]``, then score all rows."""

    name: str
    values: np.ndarray
    windows: list[tuple[int, int]]  # labelled anomaly windows, row ranges (inclusive)
    train_rows: int


# ----------------------------------------------------------------------------------------------
# leave one group out: settings chosen without the files they are judged on


@dataclass(frozen=True)
class HeldOut:
    """One group's scores with settings chosen on the other groups (``held_out``) and on all of them
    (``in_sample``), per profile; a group without labelled windows has no score, only its false
    detections (rows) at the chosen threshold."""

    group: str
    files: int
    windows: int
    chosen: str  # the candidate chosen on the other groups (standard profile)
    threshold: dict[str, float]  # per profile, chosen on the other groups
    held_out: dict[str, float | None]
    in_sample: dict[str, float | None]
    false_detections: int  # rows detecting outside windows, at the held-out standard threshold


def _group_score(files: Sequence[FileArrays], threshold: float, prof: Profile) -> float | None:
    events, _ = _prepare(files, prof)
    n_windows = sum(e.n_windows for e in events)
    return normalised(_raw_at(events, threshold, prof), n_windows, prof) if n_windows else None


def _false_rows(files: Sequence[FileArrays], threshold: float) -> int:
    out = 0
    for scores, windows, probation in files:
        s = np.asarray(scores, dtype=float)
        hit = s >= threshold
        hit[: _probation(probation, "")] = False
        for a, b in _windows(windows, len(s), ""):
            hit[a : b + 1] = False
        out += int(hit.sum())
    return out


def leave_one_group_out(candidates: dict[str, Sequence[FileArrays]], groups: Sequence[str]) -> list[HeldOut]:
    """For each group (e.g. a NAB category): the candidate configuration and the threshold of each
    profile that score best on the *other* groups, then that group's score with them (``held_out``);
    beside it, its score with the candidate and thresholds chosen on every group (``in_sample``).

    ``candidates`` maps a name to the per-file arrays of one configuration, files in the same order
    as ``groups`` (one group name per file). The standard profile chooses the candidate.
    """
    names = list(candidates)
    if not names:
        raise InvalidInputError("leave_one_group_out needs at least one candidate")
    n = len(groups)
    for name in names:
        if len(candidates[name]) != n:
            raise InvalidInputError(f"candidate {name!r} has {len(candidates[name])} files for {n} group names")

    def choose(idx: list[int]) -> tuple[str, dict[str, float]]:
        best, best_raw, thresholds = names[0], -math.inf, {}
        for name in names:
            files = [candidates[name][i] for i in idx]
            per = {p: optimise_threshold(files, prof) for p, prof in PROFILES.items()}
            if per["standard"][1] > best_raw:
                best, best_raw, thresholds = name, per["standard"][1], {p: t for p, (t, _) in per.items()}
        return best, thresholds

    everyone = list(range(n))
    all_name, all_thresholds = choose(everyone)
    out = []
    for g in dict.fromkeys(groups):
        inside = [i for i in everyone if groups[i] == g]
        others = [i for i in everyone if groups[i] != g]
        name, thresholds = choose(others)
        held = [candidates[name][i] for i in inside]
        sample = [candidates[all_name][i] for i in inside]
        events, _ = _prepare(held, PROFILES["standard"])
        out.append(HeldOut(
            group=g, files=len(inside), windows=sum(e.n_windows for e in events), chosen=name,
            threshold=thresholds,
            held_out={p: _group_score(held, thresholds[p], prof) for p, prof in PROFILES.items()},
            in_sample={p: _group_score(sample, all_thresholds[p], prof) for p, prof in PROFILES.items()},
            false_detections=_false_rows(held, thresholds["standard"]),
        ))
    return out
