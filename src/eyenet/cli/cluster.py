"""Connecting to Ray: a local instance with laptop-friendly defaults, or an existing cluster."""
from __future__ import annotations

import os
from typing import Any

from eyenet.core.errors import EyenetError

#: settings for every process of a cluster we start (set before Ray starts): quiet Ray Data
#: progress bars, and Ray Train controllers that collect epoch reports every 0.2 s instead of
#: every 2 s (an epoch of a small network takes far less)
QUIET_ENV = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_DEDUP_LOGS": "1",
             "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
#: Ray Serve's fast path (read by the processes Ray starts, so set before it starts): HAProxy as
#: the HTTP ingress instead of the Python proxy (~0.9 ms instead of ~11 ms per request on 2 cores)
#: and direct gRPC between replicas. Set either to 0 beforehand to opt out. The handle's router
#: keeps its own event loop (which the throughput mode turns off), so that synchronous code (a Ray
#: Data ``map_batches`` function, a script) can call ``handle.remote(...).result()``.
#: Arguments up to 1 MiB travel inside the call instead of through the object store: a mature
#: stream's state is ~100 KB, just over Ray's 100 KiB default, and the object store path
#: doubles a call's latency here (2 -> 4-6 ms, measured).
#: HAProxy picks the router replica by hashing the ``X-EyeNet-Series`` header when a request has
#: one (so one series' stream points meet that series' cached state), round robin otherwise.
SERIES_HEADER = "X-EyeNet-Series"
SERVE_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
             "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1", "RAY_max_direct_call_object_size": str(2**20),
             "RAY_SERVE_HAPROXY_BALANCE_ALGORITHM": f"hdr({SERIES_HEADER})"}


class ClusterError(EyenetError):
    """Ray could not be started or reached."""

    exit_code = 5


def connect(address: str | None = None, *, num_cpus: float | None = None, num_gpus: float | None = None,
            quiet: bool = True) -> Any:
    """``ray.init`` once: ``address`` (``auto`` or ``ray://host:10001``) joins a running cluster,
    otherwise a local instance starts with ``num_cpus`` logical CPUs (default: twice the cores, so
    that small trainers, tasks and their data pipelines can share a laptop)."""
    for k, v in {**QUIET_ENV, **SERVE_ENV}.items():
        os.environ.setdefault(k, v)
    import ray

    if ray.is_initialized():
        return ray
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING" if quiet else "INFO"}
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            cpus = num_cpus if num_cpus is not None else 2 * (os.cpu_count() or 1)
            # "local": always a new instance, never a cluster that `ray start` left running here
            ray.init(address="local", num_cpus=cpus, **({"num_gpus": num_gpus} if num_gpus is not None else {}), **kw)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, timeouts
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ClusterError(f"could not start or reach {where}: {str(exc).splitlines()[0][:200]}") from None
    return ray
