"""``wciaudit gate``: apply gates to a saved result without recomputing it.

A pipeline scans once and gates many times: ``wciaudit gate result.json --max-wci 150``
reads the JSON result, applies the thresholds (flags over ``[tool.wciaudit]`` /
``wciaudit.toml``), prints a table, one line per failed gate on stderr, and exits 0 when
every gate passed, 1 when one failed, 2 on bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ..result import AuditResult
from .common import check_output_folders, handle_errors
from .gating import GateSetup, report_gates
from .options import QuietOpt, gate_options, with_options


@handle_errors
@with_options(gates=gate_options)
def gate(
    result_path: Annotated[
        Path,
        typer.Argument(
            metavar="RESULT",
            help="A JSON result written by wciaudit scan.",
            dir_okay=False,
            show_default=False,
        ),
    ],
    *,
    gates: GateSetup,
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Also write the result with its new gate block here.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Apply gates to a saved result without recomputing: exit 0 pass, 1 a gate failed, 2 bad input."""
    check_output_folders(json_path)
    result = AuditResult.load(result_path)
    if not gates.config.has_gates:
        # passing with nothing checked would hide a misplaced config file in CI
        raise ConfigError(
            "no gate set: give a threshold such as --max-wci, or put them under [tool.wciaudit] "
            "in pyproject.toml or in wciaudit.toml"
        )
    result.gate = gates.apply(result)
    if json_path is not None:
        result.save(json_path)
    code = report_gates(result, gates, quiet=quiet)
    if code:
        raise typer.Exit(code)
