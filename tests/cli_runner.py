"""Run the typer app in a given working folder (the tests' one way to invoke the CLI in-process)."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from wciaudit.cli.app import app

runner = CliRunner()


def invoke_in(cwd: Path, args: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``wciaudit ARGS`` run with ``cwd`` as working folder."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        res = runner.invoke(app, args)
    finally:
        os.chdir(old)
    return res.exit_code, res.stdout, res.stderr
