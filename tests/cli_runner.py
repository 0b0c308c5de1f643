"""Run the typer app in a given working folder (the tests' one way to invoke the CLI in-process)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
from pathlib import Path

from typer.testing import CliRunner

from wciaudit.cli.app import app, main

runner = CliRunner()


ROOT = Path(__file__).resolve().parents[1]

#: the smallest scan that still runs every stage (command-line flags)
TINY_SCAN = [
    "--train-samples",
    "40",
    "--test-samples",
    "40",
    "--hessian-samples",
    "20",
    "--steps",
    "1",
    "--masking-samples",
    "0",
]
#: the same on the shipped sample CNN and data, for ``track`` over its training run
TINY_CNN_SCAN = [
    "--data",
    "sample",
    "--arch",
    str(ROOT / "sample_models" / "digits_cnn.py"),
    "--eps",
    "0.1",
    *TINY_SCAN,
]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child ``wciaudit``: this checkout first on the path (the child
    runs the code under test even where another copy is installed), one thread."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def invoke_in(cwd: Path, args: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``wciaudit ARGS`` run with ``cwd`` as working folder."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        res = runner.invoke(app, args)
    finally:
        os.chdir(old)
    return res.exit_code, res.stdout, res.stderr


def console_in(cwd: Path, args: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the console entry point ``main()`` run in this
    process as ``wciaudit ARGS``: unlike ``invoke_in`` it goes through main's mapping of
    click's usage errors and signals. The signal handlers main installs are put back.

    A real process adds only the interpreter around ``main()``; the tests that need it
    (exit status and stderr as a shell sees them) run ``python -m wciaudit``.
    """
    old_cwd, old_argv = os.getcwd(), sys.argv
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    out, err = io.StringIO(), io.StringIO()
    os.chdir(cwd)
    sys.argv = ["wciaudit", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    return code, out.getvalue(), err.getvalue()
