"""The app-wide monitor's actor (logic in :mod:`eyenet.monitor`): one per Serve application."""
from __future__ import annotations

from typing import Any

from eyenet.serve.actors import find_actor, get_actor

PREFIX = "eyenet-monitor"


def monitor_name(app: str) -> str:
    return f"{PREFIX}-{app}"


def get_monitor(app: str, mlflow_uri: str | None = None, settings: dict[str, Any] | None = None) -> Any:
    """The application's monitor (created on first use: detached, named, restarted by Ray if it dies).

    ``mlflow_uri`` and ``settings`` only matter to the call that creates it.
    """
    from eyenet.monitor import Monitor

    return get_actor(Monitor, monitor_name(app), mlflow_uri, settings)


def find_monitor(app: str) -> Any | None:
    """The application's monitor if it exists."""
    return find_actor(monitor_name(app))
