"""Causal scoring of whole series and of NAB-format corpora.

Each file is played as a stream under the benchmark's rules: the model learns
from the probation period (the first 15 % of rows, at most 750), then every row
is scored from a fresh stream using only the rows at or before it.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from eyenet.core import nab
from eyenet.core.model import AnomalyModel, Scores

ModelFactory = Callable[[], AnomalyModel]


@dataclass(frozen=True)
class FileResult:
    key: str
    rows: int
    probation: int
    scores: np.ndarray  # final [0, 1] score per row, 0 where not ready
    alarms: np.ndarray
    seconds: float
    threshold: float  # the model's alarm threshold (AnomalyModel.threshold)


def score_series(model: AnomalyModel, values: np.ndarray, train_rows: int) -> Scores:
    """Fit on the first ``train_rows`` values, then stream-score all of them."""
    model.fit(values[:train_rows])
    return model.score(values)


def _score_file(cf: nab.CorpusFile, config: dict[str, Any]) -> FileResult:
    t0 = time.perf_counter()
    series = nab.load_file(cf)
    prob = nab.probation_length(len(series))
    model = AnomalyModel.from_dict(config)
    out = score_series(model, series.values, prob)
    scores = np.nan_to_num(out.score, nan=0.0)
    return FileResult(cf.key, len(series), prob, scores, out.alarm, time.perf_counter() - t0, model.threshold)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def score_corpus(
    files: list[nab.CorpusFile], config: dict[str, Any], *, workers: int | None = None
) -> Iterator[tuple[nab.CorpusFile, FileResult]]:
    """Score every file with a fresh model built from ``config``; yields as files finish.

    Files are spread over ``workers`` processes (default: the CPU count), longest first.
    """
    n = workers or os.cpu_count() or 1
    order = sorted(files, key=lambda cf: -cf.path.stat().st_size)
    if n <= 1:
        for cf in order:
            yield cf, _score_file(cf, config)
        return
    with ProcessPoolExecutor(max_workers=n, initializer=_init_worker) as pool:
        futures = {pool.submit(_score_file, cf, config): cf for cf in order}
        from concurrent.futures import as_completed

        for fut in as_completed(futures):
            yield futures[fut], fut.result()


def write_corpus_results(root: str | Path, config: dict[str, Any], out: str | Path, label: str,
                         *, workers: int | None = None, progress: Callable[[str], None] | None = None) -> list[FileResult]:
    """``eyenet score --corpus``: write ``out/<label>/<category>/<label>_<file>.csv`` for every file."""
    files = nab.read_corpus(root)
    results = []
    for i, (cf, res) in enumerate(score_corpus(files, config, workers=workers), 1):
        series = nab.load_file(cf)
        nab.write_result(out, label, cf, series.timestamps, series.values, res.scores)
        results.append(res)
        if progress:
            progress(f"[{i}/{len(files)}] {cf.key}: {res.rows} rows in {res.seconds:.1f}s")
    return results
