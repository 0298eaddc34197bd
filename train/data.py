"""Training input through Ray Data: files on shared or cloud storage, and NAB-format corpora."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from eyenet.core import data, nab
from eyenet.core.errors import InvalidInputError


def is_remote(path: str | Path) -> bool:
    return "://" in str(path)


def read_series(path: str | Path, *, timestamp_col: str = "timestamp", value_col: str = "value",
                min_rows: int = 2) -> list[data.Series]:
    """Series of a CSV or Parquet file or URI (``s3://``, ``gs://``, a local path) read with Ray Data,
    validated by :mod:`eyenet.core.data`; a ``series`` column splits it into one series per name."""
    import ray.data

    where = str(path) if is_remote(path) else str(Path(path).absolute())  # workers have their own cwd
    kind = data._kind(where)
    if not is_remote(path):
        data._existing_file(path)
    try:
        ds = ray.data.read_csv(where) if kind == "csv" else ray.data.read_parquet(where)
        frame = ds.to_pandas()
    except Exception as exc:  # noqa: BLE001 - Ray Data wraps parser and storage errors
        raise InvalidInputError(f"{path}: unreadable ({str(exc).strip().splitlines()[0][:200]})") from None
    return data.frame_series(frame, path, timestamp_col=timestamp_col, value_col=value_col, min_rows=min_rows)


def read_corpus(root: str | Path, *, probation_only: bool = True) -> list[data.Series]:
    """Every file of a NAB-format corpus; by default only its probation rows (the unlabelled part)."""
    out = []
    for cf in nab.read_corpus(root):
        s = nab.load_file(cf)
        n = nab.probation_length(len(s)) if probation_only else len(s)
        out.append(data.Series(name=cf.key, timestamps=s.timestamps[:n], values=np.asarray(s.values[:n])))
    return out
