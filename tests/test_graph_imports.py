"""The channel engine's modules import each other without a circle; handlers see only the public API."""

from __future__ import annotations

import ast
from pathlib import Path

import compressor.graph

PKG = Path(compressor.graph.__file__).parent


def _graph_imports(path: Path) -> set[str]:
    """Modules of compressor.graph that ``path`` imports (anywhere in the file, lazily or not)."""
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("compressor.graph"):
            if node.module == "compressor.graph":
                deps |= {a.name for a in node.names}
            else:
                deps.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            deps |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("compressor.graph.")}
    return deps


def _imports() -> dict[str, set[str]]:
    return {p.stem: _graph_imports(p) for p in PKG.glob("*.py") if p.stem != "__init__"}


def test_no_import_circle_in_the_graph_package() -> None:
    graph = _imports()
    done: set[str] = set()

    def visit(mod: str, path: list[str]) -> None:
        assert mod not in path, f"import circle: {' -> '.join([*path, mod])}"
        if mod in done:
            return
        for dep in graph.get(mod, set()):
            visit(dep, [*path, mod])
        done.add(mod)

    for mod in graph:
        visit(mod, [])


def test_handlers_and_trace_use_only_the_public_layers() -> None:
    graph = _imports()
    assert graph["handlers"] <= {"cost", "labels", "registry"}
    assert graph["trace"] <= {"registry"}
    assert "MODULE_HANDLERS" not in (PKG / "trace.py").read_text()
