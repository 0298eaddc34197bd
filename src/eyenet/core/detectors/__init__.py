"""Detector families, found through the ``eyenet.core.detectors`` entry-point group.

A new family plugs in by declaring an entry point in its own package::

    [project.entry-points."eyenet.detectors"]
    myfamily = "mypkg.module:MyDetector"
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from eyenet.core.detectors.base import Detector
from eyenet.core.errors import ArtifactError, InvalidParameterError, UnknownNameError

GROUP = "eyenet.detectors"
#: the families whose networks train with torch (and may run on Ray Train or a GPU); named here
#: so that callers need not import torch to tell
TORCH_FAMILIES: tuple[str, ...] = ("lstm", "gru", "cnn", "transformer", "lstm_ae")


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available() -> list[str]:
    """Names of every registered detector family."""
    return sorted(_entry_points())


def get_class(name: str) -> type[Detector]:
    eps = _entry_points()
    if name not in eps:
        raise UnknownNameError(f"unknown detector {name!r}; available: {', '.join(available()) or 'none'}")
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise UnknownNameError(f"entry point {name!r} does not name a Detector class")
    return cls


def create(name: str, **params: Any) -> Detector:
    """A new, unfitted detector of family ``name``."""
    cls = get_class(name)
    try:
        det = cls(**params)
    except TypeError as exc:
        raise InvalidParameterError(f"{name}: {exc}") from None
    det._validate_params()
    return det


def from_dict(config: dict[str, Any]) -> Detector:
    """Inverse of :meth:`Detector.to_dict`."""
    if not isinstance(config, dict) or "family" not in config:
        raise InvalidParameterError(f"detector config needs a 'family' key, got {config!r}")
    return create(config["family"], **dict(config.get("params") or {}))


def load(path: str | Path) -> Detector:
    """Restore a detector saved with :meth:`Detector.save` (JSON + npz, never pickle)."""
    d = Path(path)
    cfg_file = d / "config.json"
    try:
        config = json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{cfg_file}: missing detector config") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{cfg_file}: corrupt detector config ({exc})") from None
    det = from_dict(config)
    try:
        return det.restore(det._load_state(d))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{d}: model state does not match its config ({exc})") from None
