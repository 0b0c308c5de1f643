"""The public API: every name in ``wciaudit.__all__`` imports, and the command line is
a layer over the package's public names, never its private helpers."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

import wciaudit

CLI = Path(wciaudit.__file__).resolve().parent / "cli"


@pytest.mark.parametrize("name", wciaudit.__all__)
def test_every_public_name_is_there(name: str) -> None:
    assert getattr(wciaudit, name) is not None


def test_scan_is_the_function_and_no_module_shadows_it() -> None:
    # the function lives in wciaudit.pipeline; no submodule is named scan, so importing
    # the package's modules never replaces the attribute
    module = importlib.import_module("wciaudit.pipeline")
    assert wciaudit.scan is module.scan and callable(wciaudit.scan)
    assert importlib.util.find_spec("wciaudit.scan") is None


def test_an_unknown_name_is_an_attribute_error_and_submodules_still_import() -> None:
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = wciaudit.not_a_name  # type: ignore[attr-defined]
    from wciaudit import bounds

    assert bounds.__name__ == "wciaudit.bounds"
    assert set(wciaudit.__all__) <= set(dir(wciaudit))


def test_all_lists_no_name_twice() -> None:
    assert len(set(wciaudit.__all__)) == len(wciaudit.__all__)


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from ... import name`` in a CLI module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            out += [(module, alias.name) for alias in node.names]
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and name not in ("__version__", "_version")


@pytest.mark.parametrize("path", sorted(CLI.glob("*.py")), ids=lambda p: p.name)
def test_cli_imports_only_public_names(path: Path) -> None:
    importlib.import_module(f"wciaudit.cli.{path.stem}")
    private = [
        f"{module}.{name}"
        for module, name in _imports(path)
        # ``.x`` is the CLI's own package; ``..x`` and ``wciaudit.x`` are the library
        if (module.startswith("..") or module.startswith("wciaudit"))
        and (_private(name) or any(_private(part) for part in module.lstrip(".").split(".")))
    ]
    assert not private, f"{path.name} imports private names: {', '.join(private)}"
