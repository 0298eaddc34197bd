"""Detached, named per-app actors (the model controller, the monitor): created on first use, restarted
by Ray if they die, found by name."""
from __future__ import annotations

from typing import Any

from eyenet.serve.state import NAMESPACE


def get_actor(cls: type, name: str, *args: Any) -> Any:
    """The actor ``name`` (created from ``cls(*args)`` if it does not exist; ``args`` matter only then)."""
    import ray

    return ray.remote(cls).options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=1000,
    ).remote(*args)


def find_actor(name: str) -> Any | None:
    """The actor ``name`` if it exists."""
    import ray

    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None
