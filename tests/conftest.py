"""Shared test configuration."""
from __future__ import annotations

import os

import pytest

# before any test module imports MLflow (see eyenet.registry)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny networks on a 2-core machine run fastest, and steadiest under load, on one thread."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for every test that needs Ray (starting one costs 10-25 s here).

    Logical resources exceed the cores on purpose: tests run small trainers,
    tasks and replicas side by side; one logical GPU lets GPU placement be tested.
    """
    from eyenet import cluster

    ray = cluster.connect(num_cpus=8, num_gpus=1)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """One embedded MLflow store (SQLite + local artifacts) for the session; creating its tables takes seconds."""
    from eyenet import registry

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    reg = registry.Registry(uri, artifact_root=(root / "artifacts").as_uri())
    reg.check()
    return reg
