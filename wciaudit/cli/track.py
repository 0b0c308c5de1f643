"""``wciaudit track``: scan every checkpoint of a training run and relate WCI to the robust gap."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..formatting import fmt_signed, one_line
from ..report import write_track_page
from ..report.track_page import threat_text
from ..track import MEASURES, TARGETS, TrackResult, overfitting_sentence
from .common import EXIT_GATE_FAILED, check_output_folders, err, handle_errors, out, progress_bars
from .options import QuietOpt, ScanSettings, VerboseOpt, scan_options, with_options
from .threads import apply_thread_policy
from .track_table import checkpoint_table


@handle_errors
@with_options(settings=scan_options)
def track(
    run: Annotated[
        list[str],
        typer.Argument(
            help="A run folder (its *.safetensors/*.pt/*.pth/*.bin/*.ckpt files and timm sub-folders), a glob such as 'run/epoch_*.safetensors', or checkpoint files.",
            show_default=False,
        ),
    ],
    *,
    settings: ScanSettings,
    cache: Annotated[
        Path | None,
        typer.Option(
            "--cache",
            help="Folder of per-checkpoint results (default: a folder for this run under $WCIAUDIT_CACHE_DIR, else $XDG_CACHE_HOME/wciaudit, else ~/.cache/wciaudit; the run folder is never written to).",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    no_cache: Annotated[
        bool,
        typer.Option(
            "--no-cache", help="Scan every checkpoint again (the cache is then refreshed)."
        ),
    ] = False,
    html: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The HTML page (default: <run name>.track.html in the current folder).",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="The JSON series (default: <run name>.track.json in the current folder).",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Scan every checkpoint of a training run; curves, WCI-gap rank correlations, resumable. A checkpoint that cannot be read is skipped with its reason, and the command exits 1 after writing the rest."""
    # first: the load the policy reads is not yet this process's own work
    config, _ = apply_thread_policy(settings.config, verbose=verbose and not quiet)
    # here: registering the command needs no torch
    from ..track import run_stem
    from ..track import track as run_track

    stem = run_stem(run)
    html_path = html or Path.cwd() / f"{stem}.track.html"
    json_target = json_path or Path.cwd() / f"{stem}.track.json"
    check_output_folders(html_path, json_target)
    with progress_bars(not quiet, restart_on="checkpoints") as progress:
        result = run_track(
            run,
            settings.data,
            config=config,
            options=settings.options,
            cache_dir=cache,
            use_cache=not no_cache,
            progress=progress,
        )
    written = [result.save(json_target), write_track_page(result, html_path)]
    if not quiet:
        _print_summary(result)
        for path in written:
            out.print(f"wrote {path}", markup=False)
    if result.skipped:
        for s in result.skipped:
            err.print(
                f"wciaudit: skipped {s.path}: {one_line(s.reason)}", markup=False, soft_wrap=True
            )
        raise typer.Exit(EXIT_GATE_FAILED)  # the run was written, but not every checkpoint is in it


def _print_summary(result: TrackResult) -> None:
    out.print(checkpoint_table(result, out.width))
    corr = Table(
        title="Rank correlation with the robust gap (Kendall tau / Spearman rho)",
        title_justify="left",
        show_edge=False,
    )
    corr.add_column("measure", overflow="fold")
    for t in TARGETS:
        corr.add_column(f"vs {t}", justify="right", no_wrap=True)
    for m, label in MEASURES.items():
        cells = []
        for t in TARGETS:
            c = result.correlation(m, t)
            cells.append(
                "–"
                if c is None or c.kendall_tau is None
                else f"{fmt_signed(c.kendall_tau)} / {fmt_signed(c.spearman_rho)}"
            )
        corr.add_row(label, *cells)
    out.print(corr)
    peak = result.markers()["wci_peak"]
    overfitting = overfitting_sentence(result)
    if overfitting is not None:
        out.print(overfitting, markup=False)
    if peak is not None:
        out.print(f"WCI peaks at epoch {peak['epoch']:g} ({peak['wci']:.4g})")
    out.print(f"threat model: {threat_text(result)}", markup=False)
    for note in result.notes:
        out.print(f"note: {note}", markup=False)
    out.print(
        f"{result.scanned} scanned, {len(result.entries) - result.scanned} from the cache"
        + (f" ({result.cache_dir})" if result.cache_dir else ""),
        markup=False,
    )
