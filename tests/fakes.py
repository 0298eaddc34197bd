"""In-memory stand-ins for the collaborators of the Ray-free serving tests (a registry of one model)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from eyenet.serving.pipeline import AliasResolver, ModelCache, Pipeline
from eyenet.serving.settings import AppConfig


class Shelf:
    """A registry holding one fitted model under every name, at version 1 (alias ``champion``)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def load(self, name: str, version: int | None = None) -> Any:
        return self.model

    def version(self, name: str, version: int | None = None, *, alias: str | None = None) -> Any:
        return SimpleNamespace(version=1, created=0.0)


def pipeline(model: Any, store: Any, config: AppConfig | None = None) -> Pipeline:
    """A :class:`Pipeline` serving ``model`` from ``store`` without Ray."""
    shelf = Shelf(model)
    config = config or AppConfig()
    return Pipeline(AliasResolver(shelf), ModelCache(shelf, capacity=config.models_cached), store, config=config)
