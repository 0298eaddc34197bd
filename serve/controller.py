"""The model controller's actor (logic in :mod:`eyenet.controller`): one per Serve application."""
from __future__ import annotations

from typing import Any

from eyenet.serve.actors import find_actor, get_actor

PREFIX = "eyenet-controller"


def controller_name(app: str) -> str:
    return f"{PREFIX}-{app}"


def get_controller(app: str, mlflow_uri: str | None = None, settings: dict[str, Any] | None = None) -> Any:
    """The application's controller (created on first use: detached, named, restarted by Ray if it dies).

    ``mlflow_uri`` and ``settings`` only matter to the call that creates it.
    """
    from eyenet.controller import Controller

    return get_actor(Controller, controller_name(app), mlflow_uri, settings)


def find_controller(app: str) -> Any | None:
    """The application's controller if it exists."""
    return find_actor(controller_name(app))
