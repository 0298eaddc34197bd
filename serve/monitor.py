"""The app-wide monitor's actor (logic in :mod:`eyenet.monitor`): one per Serve application."""
from __future__ import annotations

from typing import Any

from eyenet.serve.state import NAMESPACE

PREFIX = "eyenet-monitor"


def monitor_name(app: str) -> str:
    return f"{PREFIX}-{app}"


def get_monitor(app: str, mlflow_uri: str | None = None, settings: dict[str, Any] | None = None) -> Any:
    """The application's monitor (created on first use: detached, named, restarted by Ray if it dies).

    ``mlflow_uri`` and ``settings`` only matter to the call that creates it.
    """
    import ray

    from eyenet.monitor import Monitor

    return ray.remote(Monitor).options(
        name=monitor_name(app), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=1000,
    ).remote(mlflow_uri, settings)


def find_monitor(app: str) -> Any | None:
    """The application's monitor if it exists."""
    import ray

    try:
        return ray.get_actor(monitor_name(app), namespace=NAMESPACE)
    except ValueError:
        return None
