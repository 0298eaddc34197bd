"""The detached, named actors of an EyeNet app: the stream store, the model controller and the monitor.

Each is created on first use, restarted by Ray if it dies and found by name; the
logic lives in :mod:`eyenet.serving.streams`, :mod:`eyenet.serving.controller`
and :mod:`eyenet.monitoring.monitor`, which need no Ray.
"""
from __future__ import annotations

import functools
from typing import Any

NAMESPACE = "eyenet"
STORE_NAME = "eyenet-stream-state"
CONTROLLER_PREFIX = "eyenet-controller"
MONITOR_PREFIX = "eyenet-monitor"


def get_actor(cls: type, name: str, *args: Any, resources: dict[str, float] | None = None) -> Any:
    """The actor ``name`` (created from ``cls(*args)`` if it does not exist; ``args`` matter only then),
    on a node offering ``resources`` (``AppConfig.actor_resources``: custom Ray resources)."""
    import ray

    return ray.remote(cls).options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=1000, resources=dict(resources or {}),
    ).remote(*args)


def find_actor(name: str) -> Any | None:
    """The actor ``name`` if it exists."""
    import ray

    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def get_store(state_uri: str, settings: dict[str, Any] | None = None, quota: dict[str, Any] | None = None,
              resources: dict[str, float] | None = None) -> Any:
    """The stream store (one per cluster; its calls are retried across restarts) at ``state_uri`` (a
    folder or a postgresql:// URI; see :mod:`eyenet.serving.snapshots`); ``settings``
    (``StoreSettings``) and ``quota`` (``QuotaSettings``), as dicts, matter only to the call that creates it."""
    import ray

    from eyenet.serving.streams import StreamStore

    return ray.remote(StreamStore).options(
        name=STORE_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, max_restarts=-1,
        max_task_retries=-1, num_cpus=0, resources=dict(resources or {}),
    ).remote(state_uri, settings=settings, quota=quota)


def flush_store(timeout_s: float = 10.0) -> int | None:
    """Write the stream store's unwritten states now (``eyenet down``, before Ray stops); how many,
    or None when there is no store. Raises what the write raised, or a timeout."""
    import ray

    store = find_actor(STORE_NAME)
    if store is None:
        return None
    return ray.get(store.flush.remote(), timeout=timeout_s)


def controller_name(app: str) -> str:
    return f"{CONTROLLER_PREFIX}-{app}"


def get_controller(app: str, mlflow_uri: str | None = None, settings: dict[str, Any] | None = None,
                   resources: dict[str, float] | None = None) -> Any:
    """The application's model controller; ``mlflow_uri`` and ``settings`` matter only to the call that creates it.

    It finds the app's monitor with :func:`monitor_client` and runs retrainings as Ray tasks
    (:func:`launch_retrain`)."""
    from eyenet.serving.controller import Controller

    return get_actor(Controller, controller_name(app), mlflow_uri, settings,
                     functools.partial(monitor_client, app),
                     functools.partial(launch_retrain, resources=resources), resources=resources)


def find_controller(app: str) -> Any | None:
    return find_actor(controller_name(app))


def monitor_name(app: str) -> str:
    return f"{MONITOR_PREFIX}-{app}"


def get_monitor(app: str, mlflow_uri: str | None = None, settings: dict[str, Any] | None = None,
                resources: dict[str, float] | None = None) -> Any:
    """The application's monitor; ``mlflow_uri`` and ``settings`` matter only to the call that creates it."""
    from eyenet.monitoring.monitor import Monitor

    return get_actor(Monitor, monitor_name(app), mlflow_uri, settings, resources=resources)


def find_monitor(app: str) -> Any | None:
    return find_actor(monitor_name(app))


class Remote:
    """An actor handle whose methods are awaited like local coroutines: ``await Remote(h).report(name)``."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __getattr__(self, method: str) -> Any:
        bound = getattr(self._handle, method)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await bound.remote(*args, **kwargs)

        return call


def monitor_client(app: str) -> Remote | None:
    """The app's monitor as the controller's retraining scheduler calls it, or None while there is none."""
    handle = find_monitor(app)
    return None if handle is None else Remote(handle)


async def launch_retrain(num_cpus: float, *args: Any, resources: dict[str, float] | None = None,
                         **kwargs: Any) -> Any:
    """Run :func:`eyenet.lifecycle.retrain.retrain` as a Ray task of ``num_cpus`` (not retried), on a
    node offering ``resources`` (the app's ``actor_resources``: beside the controller, which gates
    the result on the data the task writes under ``retrain.root``)."""
    import ray

    from eyenet.lifecycle import retrain

    task = ray.remote(retrain.retrain).options(num_cpus=num_cpus, max_retries=0, resources=dict(resources or {}))
    return await task.remote(*args, **kwargs)
