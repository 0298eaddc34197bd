"""The model controller's actor (logic in :mod:`eyenet.controller`): one per Serve application."""
from __future__ import annotations

from typing import Any

from eyenet.serve.state import NAMESPACE

PREFIX = "eyenet-controller"


def controller_name(app: str) -> str:
    return f"{PREFIX}-{app}"


def get_controller(app: str, mlflow_uri: str | None = None, settings: dict[str, Any] | None = None) -> Any:
    """The application's controller (created on first use: detached, named, restarted by Ray if it dies).

    ``mlflow_uri`` and ``settings`` only matter to the call that creates it.
    """
    import ray

    from eyenet.controller import Controller

    return ray.remote(Controller).options(
        name=controller_name(app), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=1000,
    ).remote(mlflow_uri, settings)


def find_controller(app: str) -> Any | None:
    """The application's controller if it exists (for `eyenet status` and tests)."""
    import ray

    try:
        return ray.get_actor(controller_name(app), namespace=NAMESPACE)
    except ValueError:
        return None
