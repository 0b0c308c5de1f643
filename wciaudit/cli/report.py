"""``wciaudit report``: render saved JSON results as one HTML page (and a CSV table)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ..result import AuditResult
from ..track.result import TrackResult, read_track
from .common import check_output_folders, err, handle_errors, out
from .options import CsvOpt, PlotlyMode, PlotlyOpt, QuietOpt


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
    plotly: PlotlyOpt = PlotlyMode.inline,
    csv_path: CsvOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Write the HTML report (self-contained unless --plotly cdn) for saved results; an incomplete result (a stopped scan) is rendered with a warning. A track result (wciaudit track --json) gives its track page."""
    from ..export import write_csv
    from ..report import write_report, write_track_page

    check_output_folders(output, csv_path)
    track = track_result(results)
    if track is not None:
        if csv_path is not None:
            raise ConfigError("--csv is for scan results; a track result's JSON has the series")
        written = write_track_page(track, output, plotly=plotly.value)
        if not quiet:
            out.print(f"wrote {written}", markup=False, highlight=False)
        return
    loaded = [AuditResult.load(p) for p in results]
    for path, result in zip(results, loaded, strict=True):
        if not result.complete:
            err.print(
                f"wciaudit: warning: {path}: {result.incomplete_reason}",
                markup=False,
                soft_wrap=True,
            )
    written = [write_report(loaded, output, plotly=plotly.value)]
    if csv_path is not None:
        written.append(write_csv(loaded, csv_path))
    if not quiet:
        for path in written:
            out.print(f"wrote {path}", markup=False, highlight=False)


def track_result(paths: list[Path]) -> TrackResult | None:
    """The track result when ``paths`` name one (``wciaudit track --json``), rendered as
    the track page; None when none does. A track result renders alone."""
    tracks = [(p, t) for p in paths if (t := read_track(p)) is not None]
    if not tracks:
        return None
    if len(paths) > 1:
        raise ConfigError(
            f"{tracks[0][0]} is a track result: render it alone (wciaudit report "
            f"{tracks[0][0]} -o track.html); scan results compare among themselves"
        )
    return tracks[0][1]
