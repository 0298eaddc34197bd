"""``eyenet demo``: train the default detectors on synthetic telemetry and report what each one flags."""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TextIO

import numpy as np

from eyenet.cli.output import duration, table
from eyenet.core import presets

# ----------------------------------------------------------------------------------------------
# eyenet demo


@dataclass(frozen=True)
class Flagged:
    """One injected anomaly of a metric and whether the detector's alarms caught it."""

    metric: str
    kind: str
    start: int
    end: int  # exclusive
    detected: bool
    delay: int | None  # rows from the anomaly's first row to the first alarm


def match_alarms(
    alarms: np.ndarray, anomalies: Sequence[Any], *, first_row: int, tolerance: int, metric: str = ""
) -> tuple[list[Flagged], np.ndarray]:
    """Match alarm rows to injected anomalies ``(kind, start, end)``.

    An anomaly is detected by an alarm in rows ``start .. end - 1 + tolerance``;
    the delay is the first such row minus ``start``. Alarms from ``first_row`` on
    outside every such span are false alarms; their rows are returned.
    """
    a = np.asarray(alarms, dtype=bool)
    covered = np.zeros(len(a), dtype=bool)
    out = []
    for an in anomalies:
        hi = min(an.end + tolerance, len(a))
        covered[an.start : hi] = True
        hits = np.flatnonzero(a[an.start : hi])
        out.append(
            Flagged(metric, an.kind, an.start, an.end, bool(len(hits)), int(hits[0]) if len(hits) else None)
        )
    scored = np.arange(len(a)) >= first_row
    return out, np.flatnonzero(a & ~covered & scored)


def load_families(config: dict[str, Any]) -> None:
    """Import the detector classes a model config names, an ensemble's members included."""
    from eyenet.core import detectors

    det = config.get("detector") or {}
    members = (det.get("params") or {}).get("members") or []
    for name in [det.get("family"), *(m.get("family") for m in members if isinstance(m, dict))]:
        if isinstance(name, str):
            detectors.get_class(name)


@contextlib.contextmanager
def torch_threads(n: int, configs: Sequence[dict[str, Any]]) -> Iterator[None]:
    """Run with ``n`` torch threads when a config needs torch, restoring the count afterwards.

    The networks are small: one thread trains them faster than two, and far
    more steadily when the cores are busy.
    """
    for config in configs:
        load_families(config)
    torch = sys.modules.get("torch")
    if torch is None:  # no torch family involved: do not import it
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Progress:
    """Training progress on stderr: a live line on a terminal, one line per model otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.label = ""

    def start(self, label: str) -> None:
        self.label = label
        if self.live:
            self._write(f"[{self.done + 1}/{self.total}] {label} ...")

    def epoch(self, max_epochs: int | None) -> Callable[[dict[str, Any]], None]:
        def on_epoch(record: dict[str, Any]) -> None:
            if self.live:
                of = f"/{max_epochs}" if max_epochs else ""
                self._write(
                    f"[{self.done + 1}/{self.total}] {self.label}: epoch {record['epoch']}{of}, "
                    f"val loss {record['val_loss']:.4g}"
                )

        return on_epoch

    def finish(self, detail: str) -> None:
        self.done += 1
        line = f"[{self.done}/{self.total}] {self.label}: {detail}"
        if self.live:
            self._write(line)
            self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _write(self, text: str) -> None:
        self.stream.write("\r\033[K" + text)
        self.stream.flush()


def demo_telemetry(rows: int, seed: int, metrics: Sequence[str]) -> tuple[Any, int]:
    """``eyenet demo``'s labelled telemetry (:func:`eyenet.core.synthetic.generate`) and the first
    scored row: every row before it is anomaly-free and is what each model is fitted on."""
    from eyenet.core import synthetic

    telemetry = synthetic.generate(
        n=rows,
        metrics=metrics,
        seed=seed,
        anomalies_per_metric=presets.UP_ANOMALIES_PER_METRIC,
        anomaly_free_prefix=presets.UP_TRAIN_FRACTION,
    )
    return telemetry, int(math.ceil(presets.UP_TRAIN_FRACTION * rows))


def score_metric(config: dict[str, Any], telemetry: Any, metric: str, first: int,
                 progress: _Progress | None = None) -> tuple[list[Flagged], np.ndarray, float]:
    """Fit a model from ``config`` on ``metric``'s rows before ``first``, score the whole series from
    a fresh stream and match its alarms with the injected anomalies: (anomalies with whether each
    was caught, false alarm rows, fit seconds). ``progress`` hears of each epoch and the end."""
    from eyenet.core.model import AnomalyModel

    x = telemetry.frame[metric].to_numpy()
    model = AnomalyModel.from_dict(config)
    det = model.detector
    if progress is not None and hasattr(type(det), "on_epoch"):  # torch families report each epoch
        det.on_epoch = progress.epoch(getattr(det, "max_epochs", None))
    t0 = time.perf_counter()
    model.fit(x[:first])
    secs = time.perf_counter() - t0
    out = model.score(x)
    if progress is not None:
        epochs = getattr(det, "history_", None)
        progress.finish(f"fit {secs:.1f} s" + (f", {len(epochs)} epochs" if epochs else ""))
    found, false = match_alarms(
        out.alarm, telemetry.anomalies[metric], first_row=first, tolerance=presets.UP_TOLERANCE, metric=metric
    )
    return found, false, secs


def cmd_demo(args: argparse.Namespace) -> int:
    families = args.detectors or [*presets.DEFAULT_SUITE, "ensemble"]
    configs = {f: presets.model_config(f) for f in families}  # unknown names fail here, before any work
    metrics = args.metrics or presets.UP_METRICS
    telemetry, first = demo_telemetry(args.rows, args.seed, metrics)
    step = telemetry.frame["timestamp"].iloc[1] - telemetry.frame["timestamp"].iloc[0]
    n_anomalies = sum(len(v) for v in telemetry.anomalies.values())
    print(
        f"eyenet demo: offline run on synthetic telemetry\n"
        f"  {args.rows:,} rows every {duration(step)} ({duration(step * args.rows)}), seed {args.seed}, "
        f"metrics: {', '.join(metrics)}\n"
        f"  {n_anomalies} injected anomalies after row {first}; each detector trains on rows 0..{first - 1} "
        f"(anomaly-free) and scores every row causally\n"
        f"  an anomaly counts as detected by an alarm inside it or up to {presets.UP_TOLERANCE} rows after it; "
        f"other alarms from row {first} on are false alarms\n",
        flush=True,
    )
    progress = _Progress(len(families) * len(metrics))
    scored_rows = (args.rows - first) * len(metrics)
    summary = []
    with torch_threads(1, list(configs.values())):
        for family in families:
            flagged: list[Flagged] = []
            false_rows: dict[str, np.ndarray] = {}
            fit_seconds = 0.0
            for metric in metrics:
                progress.start(f"{family} on {metric}")
                found, false, secs = score_metric(configs[family], telemetry, metric, first, progress)
                fit_seconds += secs
                flagged.extend(found)
                false_rows[metric] = false
            print(_detector_report(family, flagged, false_rows, fit_seconds), flush=True)
            n_false = sum(len(v) for v in false_rows.values())
            summary.append(
                (family, sum(f.detected for f in flagged), len(flagged), 1000.0 * n_false / max(scored_rows, 1), fit_seconds)
            )
    print(_summary_table(summary, scored_rows))
    return 0


def _rows_text(rows: np.ndarray, limit: int = 6) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f", ... ({len(rows) - limit} more)" if len(rows) > limit else "")


def _detector_report(family: str, flagged: list[Flagged], false_rows: dict[str, np.ndarray], fit_seconds: float) -> str:
    hits = sum(f.detected for f in flagged)
    lines = [f"== {family}: detected {hits}/{len(flagged)} injected anomalies (fit {fit_seconds:.1f} s)"]
    rows = [
        (
            f.metric,
            f.kind,
            f"{f.start}-{f.end - 1}",
            "yes" if f.detected else "no",
            str(f.delay) if f.delay is not None else "-",
        )
        for f in flagged
    ]
    lines += table(("metric", "anomaly", "rows", "detected", "delay (rows)"), rows, indent="  ", right=(4,))
    n_false = sum(len(v) for v in false_rows.values())
    lines.append(f"  false alarms: {n_false}")
    for metric, r in false_rows.items():
        if len(r):
            lines.append(f"    {metric}: {len(r)} at rows {_rows_text(r)}")
    return "\n".join(lines) + "\n"


def _summary_table(summary: list[tuple[str, int, int, float, float]], scored_rows: int) -> str:
    rows = [
        (family, f"{hit}/{total} ({100.0 * hit / total:.0f}%)" if total else "-", f"{fa:.2f}", f"{secs:.1f}")
        for family, hit, total, fa, secs in summary
    ]
    head = ("detector", "recall", "false alarms / 1,000 points", "fit s")
    lines = [f"Summary over {scored_rows:,} scored points:", *table(head, rows, right=(1, 2, 3))]
    return "\n".join(lines)


