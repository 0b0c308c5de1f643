"""``wciaudit report``: render saved JSON results as one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..result import AuditResult
from .common import check_output_folders, handle_errors, out
from .options import QuietOpt


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
    check_output_folders(output)
    written = write_report(loaded, output)
    if not quiet:
        out.print(f"wrote {written}", markup=False, highlight=False)
