"""The package layers: each imports only from the layers below it, and no module imports itself back.

Order, bottom to top: ``eyenet.core`` < ``eyenet.lifecycle`` < ``eyenet.monitoring``
< ``eyenet.serving`` < the Ray wiring (``eyenet.serve``, ``eyenet.train``,
``eyenet.tune``) < ``eyenet.cli``. Imports inside functions count too: a lazy
import is still a dependency. ``eyenet/__init__.py`` (the public API) may use
any layer but the CLI, and no layer may import it except for ``__version__``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"eyenet": REPO / "src" / "eyenet", "eyenet.serve": REPO / "serve", "eyenet.train": REPO / "train",
         "eyenet.tune": REPO / "tune"}
LAYERS = {"eyenet.core": 0, "eyenet.lifecycle": 1, "eyenet.monitoring": 2, "eyenet.serving": 3,
          "eyenet.serve": 4, "eyenet.train": 4, "eyenet.tune": 4, "eyenet.cli": 5, "eyenet": 6}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, root in ROOTS.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("").parts
            parts = [p for p in rel if p != "__init__"]
            name = ".".join([pkg, *parts])
            if pkg == "eyenet" and parts and parts[0] in ("serve", "train", "tune"):
                continue
            out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The eyenet modules ``name`` imports (a ``from pkg import mod`` names the module ``pkg.mod``)."""
    found = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "eyenet")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "eyenet":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    found.discard(name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def test_every_module_belongs_to_a_layer_package():
    flat = [m for m in MODULES if m.count(".") == 1 and m.split(".")[1] not in ("core", "lifecycle", "monitoring",
                                                                                   "serving", "cli", "serve",
                                                                                   "train", "tune")]
    assert flat == [], f"modules outside the layer packages: {flat}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    if module == "eyenet":
        bad = [t for t in GRAPH[module] if _layer(t) >= LAYERS["eyenet.cli"]]
    else:
        # ``from eyenet import __version__`` is the one thing any module may take from the top
        bad = [t for t in GRAPH[module] if t != "eyenet" and _layer(t) > _layer(module)]
    assert bad == [], f"{module} imports from a higher layer: {bad}"


def test_no_import_cycles():
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt not in GRAPH:
                continue
            if seen.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for start in sorted(GRAPH):
        if start not in seen:
            visit(start, [start])
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
