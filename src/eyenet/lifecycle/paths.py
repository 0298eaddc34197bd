"""Where the embedded defaults live: the ``.eyenet`` working folder (below the registry and the audit log,
which both need it)."""
from __future__ import annotations

from pathlib import Path

HOME = ".eyenet"


def home(root: str | Path | None = None) -> Path:
    """The working folder of the embedded defaults (``.eyenet`` under ``root`` or the cwd)."""
    return Path(root or Path.cwd()).absolute() / HOME
