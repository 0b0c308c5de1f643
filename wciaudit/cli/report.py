"""``wciaudit report``: render saved JSON results as one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ..result import AuditResult
from .common import QuietOpt, handle_errors, out


@handle_errors
def report(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="One or more wciaudit JSON results; several add a comparison view against the first.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the HTML report.", dir_okay=False)
    ] = Path("report.html"),
    quiet: QuietOpt = False,
) -> None:
    """Write the self-contained HTML report (no network needed to open it) for saved results."""
    from ..report import write_report

    loaded = [AuditResult.load(p) for p in results]
    if not output.parent.is_dir():
        raise ConfigError(f"output folder does not exist: {output.parent}")
    written = write_report(loaded, output)
    if not quiet:
        out.print(f"wrote {written}", markup=False, highlight=False)
