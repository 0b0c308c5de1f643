"""The package keeps its shape: no module over 600 lines, no function over 80, and every
module has a test module of its own name (or is listed below with the one that tests it).

A guard, so that a module that grows several jobs or a function that grows several
stages is split when it is written, not in a later clean-up, and so that a new module
comes with its tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "wciaudit"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

TESTS = Path(__file__).resolve().parent
MODULES = sorted(PACKAGE.rglob("*.py"))

# Modules tested through the module that uses them, or with their neighbours in one test
# module of the package's own folder; everything else in wciaudit/ has
# tests/<folder>/test_<name>.py (commands: tests/cli/test_<name>_cli.py). Paths are
# relative to wciaudit/ and tests/.
TESTED_WITH = {
    "__init__.py": "test_public_api.py",
    "__main__.py": "cli/test_scan_cli.py",  # python -m wciaudit, as a real subprocess
    "_lazy.py": "test_public_api.py",  # the package's names imported on first use
    "_version.py": "test_public_api.py",
    "errors.py": "test_scan.py",  # the typed errors a scan raises
    "gate_config.py": "test_gate.py",  # discovery, precedence, malformed files
    "retry.py": "test_hardening.py",  # the out-of-memory retry
    "pipeline/__init__.py": "test_scan.py",  # scan(): the stages composed
    "pipeline/run.py": "test_scan_retry.py",  # what the stages share, the batch retry
    "pipeline/load.py": "test_scan.py",  # the threat model, the inventory, the data
    "pipeline/attack.py": "test_scan_retry.py",  # the attack stage, the masking retry
    "pipeline/evaluate.py": "test_scan.py",  # robust figures of a whole scan
    "pipeline/measure.py": "test_layer_flags.py",  # the Hessian subset, the traces, flags
    "pipeline/stages.py": "test_incomplete_result.py",  # the stages, partial results
    "checkpoints/_text.py": "checkpoints/test_loader.py",
    "checkpoints/arch.py": "checkpoints/test_loader.py",
    "checkpoints/build.py": "checkpoints/test_loader.py",
    "checkpoints/data_config.py": "checkpoints/test_loader.py",
    "checkpoints/memory.py": "test_hardening.py",  # the memory limit
    "checkpoints/record.py": "checkpoints/test_loader.py",
    "checkpoints/strict.py": "checkpoints/test_loader.py",
    "cli/app.py": "cli/test_help.py",
    "cli/common.py": "cli/test_signals.py",  # one map from exceptions to exit codes
    "cli/gating.py": "cli/test_gate_cli.py",
    "cli/report.py": "test_report.py",
    "curvature/allocation.py": "test_route.py",  # the WCI target's probe counts
    "curvature/estimate.py": "test_route.py",
    "curvature/ggn.py": "test_curvature.py",  # against dense float64 Hessians
    "curvature/groups.py": "test_curvature.py",
    "curvature/hutchinson.py": "test_curvature.py",
    "curvature/hutchpp.py": "test_hutchpp.py",
    "curvature/mc_ggn.py": "test_mc_ggn.py",
    "curvature/objective.py": "test_curvature.py",
    "curvature/pooling.py": "test_route.py",  # two runs pooled equal one run
    "curvature/probe_graphs.py": "curvature/test_taps.py",  # both engines, same values
    "curvature/rounds.py": "curvature/test_first_look.py",
    "curvature/route.py": "test_route.py",
    "data/cifar.py": "data/test_sources.py",
    "data/image_folder.py": "data/test_sources.py",
    "data/load.py": "data/test_sources.py",
    "data/npz.py": "data/test_sources.py",
    "report/charts.py": "test_report.py",
    "report/html.py": "test_report.py",
    "report/single.py": "test_report.py",
    "report/track_page.py": "test_track.py",
    "track/cache.py": "test_track.py",
    "track/files.py": "test_track.py",
    "track/result.py": "test_track.py",
    "track/run.py": "test_track.py",
}


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def test_the_package_has_modules() -> None:
    assert len(MODULES) > 20


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_and_function_sizes(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines (at most {MAX_MODULE_LINES})"
    long = [
        f"{f.name} ({f.end_lineno - f.lineno + 1} lines, from line {f.lineno})"
        for f in _functions(ast.parse(text, filename=str(path)))
        if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def _own_test_modules(rel: Path) -> list[Path]:
    folder = TESTS / rel.parent
    return [folder / f"test_{rel.stem}.py", folder / f"test_{rel.stem}_cli.py"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_has_a_test_module(path: Path) -> None:
    rel = path.relative_to(PACKAGE)
    if path.name == "__init__.py" and rel.parent != Path("."):
        return  # a package's re-exports, tested with its modules
    own = [t for t in _own_test_modules(rel) if t.is_file()]
    listed = TESTED_WITH.get(rel.as_posix())
    assert own or listed, f"no tests/{rel.parent / f'test_{rel.stem}.py'} and not in TESTED_WITH"
    assert not (own and listed), f"{rel} has {own[0].relative_to(TESTS)}: drop it from TESTED_WITH"
    if listed:
        assert (TESTS / listed).is_file(), f"{rel}: {listed} does not exist"


def test_tested_with_names_only_modules_that_exist() -> None:
    modules = {p.relative_to(PACKAGE).as_posix() for p in MODULES}
    assert set(TESTED_WITH) <= modules, sorted(set(TESTED_WITH) - modules)
