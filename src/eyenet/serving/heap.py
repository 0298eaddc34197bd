"""A serving replica's heap and interpreter settings: what the cyclic garbage collector walks, and how
often the event loop gets the interpreter back from the replica's other threads (no Ray here).

:func:`settle_heap` runs once a replica has imported and loaded what it serves; :func:`settle_after_first_load`
once more after its first model load, which imports much that lives as long as the process.
"""
from __future__ import annotations

import gc
import sys

#: the cyclic garbage collector's first-generation threshold in a replica (Python's default: 700)
GC_THRESHOLD = (10_000, 10, 10)
#: a replica's thread switch interval (Python's default: 5 ms)
SWITCH_S = 0.001

_loaded_once = False


def settle_heap(*, loaded: bool = False) -> None:
    """Move every object alive now out of the cyclic garbage collector's sight (``gc.freeze``) and
    collect young objects less often (:data:`GC_THRESHOLD`; garbage without cycles is freed at once
    anyway). In-process, 30 refused batches of 1,000 series spent 0.7-1.0 s in 458 collections, the
    longest pause 370-530 ms, paid by whichever request happened to allocate; with this, no collection
    ran and the slowest batch took 47-58 ms instead of 370-470 ms. ``loaded``: the replica's models
    are loaded already, so its first later load need not settle again."""
    global _loaded_once
    _loaded_once = _loaded_once or loaded
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    # the event loop shares the interpreter with the scoring, push and heartbeat threads: each time it
    # waits for the lock (after every I/O) it waits at most this long, not Python's default 5 ms
    sys.setswitchinterval(SWITCH_S)


def settle_after_first_load() -> None:
    """:func:`settle_heap` again once the replica's first model has loaded: a first load imports
    what loading and scoring need (MLflow's store and its SQLAlchemy, the ONNX exporter, ...), about
    200,000 objects that live as long as the process. Left in the collector's sight, every full
    pass walked them: after a tenant started 10,000 series, a pass of 120-140 ms in each router
    replica, paid by whichever request was on the loop. One pass now, while that first load's
    request waits for its model anyway; later loads bring only their model's objects."""
    if not _loaded_once:
        settle_heap(loaded=True)


__all__ = ["GC_THRESHOLD", "SWITCH_S", "settle_after_first_load", "settle_heap"]
