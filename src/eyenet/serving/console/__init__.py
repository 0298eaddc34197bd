"""The web console: a static single-page app that the API serves at ``/`` (same origin).

``static/`` holds the page, its script and style sheet, and the vendored uPlot build
(``console/`` at the top of the repository pins and copies it); nothing is built at run time.
:func:`asset` is the one way in: a relative path under ``static/`` to its bytes and content type.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

STATIC = Path(__file__).parent / "static"

#: the file served for ``/``
INDEX = "index.html"

#: the types of the files the console is made of; any other file is not served
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


def _relative(path: str) -> PurePosixPath | None:
    """``path`` as a plain relative path of named parts (``a/b.js``), or None: empty, absolute, a
    drive or a backslash, a NUL, an empty part, or a part that is ``.``, ``..`` or hidden.
    Nothing is URL-decoded here: ``%2e%2e`` is a name like any other."""
    if not path or "\x00" in path or "\\" in path or ":" in path:
        return None
    parts = path.split("/")
    if any(not part or part.startswith(".") for part in parts):  # "/x", "a//b", ".", "..", ".hidden"
        return None
    return PurePosixPath(*parts)


def asset(path: str) -> tuple[bytes, str] | None:
    """The bytes and content type of the file at ``path`` under :data:`STATIC`, or None when there is
    no such file, the path is refused (absolute, ``..``, resolving outside STATIC through a symlink),
    or its type is not one of :data:`CONTENT_TYPES`."""
    rel = _relative(path)
    if rel is None:
        return None
    kind = CONTENT_TYPES.get(rel.suffix.lower())
    if kind is None:
        return None
    try:
        root = STATIC.resolve(strict=True)
        target = (root / rel).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None
    if not target.is_relative_to(root) or not target.is_file():
        return None
    try:
        return target.read_bytes(), kind
    except OSError:
        return None
