"""The package's architecture: no module imports a private name of another, and the
import graph has no cycle (a package's __init__ importing its own modules is not one).

Imports are read from the source (any import statement, at module level, in a function
or under TYPE_CHECKING), so a lazy import inside a function counts as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "wciaudit"


def _modules() -> dict[str, tuple[Path, list[str]]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        package = parts[:-1] if parts[-1] == "__init__" else parts[:-1]
        if parts[-1] == "__init__":
            parts = parts[:-1]
            package = parts
        out[".".join(parts)] = (path, package)
    return out


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """The import graph between the package's modules, and every private name imported
    from another module: (importer, module, name)."""
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for name, (path, package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges[name] |= {a.name for a in node.names if a.name in modules}
            if not isinstance(node, ast.ImportFrom):
                continue
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if full in modules:
                    edges[name].add(full)
                elif target in modules:
                    edges[name].add(target)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append((name, target, alias.name))
    return edges, private


def test_no_module_imports_a_private_name_of_another() -> None:
    _, private = _imports()
    assert private == []


def test_the_import_graph_has_no_cycle() -> None:
    edges, _ = _imports()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_checks_see_the_package() -> None:
    edges, _ = _imports()
    assert "wciaudit.pipeline" in edges and "wciaudit.pipeline.measure" in edges
    assert "wciaudit.pipeline.run" in edges["wciaudit.pipeline.measure"]
