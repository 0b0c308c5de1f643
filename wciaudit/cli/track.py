"""``wciaudit track``: scan every checkpoint of a training run and relate WCI to the robust gap."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ..formatting import break_lines, fmt_estimate, fmt_fixed, fmt_signed, one_line
from ..report import write_track_page
from ..report.track_page import threat_text
from ..track import MEASURES, TARGETS, TrackResult, overfitting_sentence
from .common import EXIT_GATE_FAILED, check_output_folders, err, handle_errors, out, progress_bars
from .options import QuietOpt, ScanSettings, VerboseOpt, scan_options, with_options
from .threads import apply_thread_policy


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
    """Scan every checkpoint of a training run; curves, WCI-gap rank correlations, resumable."""
    # before torch is imported: OpenMP reads its wait policy from the environment then
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
            **settings.threat_model,
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


def _checkpoint_table(result: TrackResult, width: int) -> Table:
    """The checkpoints, one row each. At any width (80 columns in CI logs) a file name
    breaks only between its parts (``epoch_10.`` / ``safetensors``), never inside one; a
    suffix every file shares is said once in the title, and "(cache)" goes under the
    name rather than in a column."""
    names = [Path(e.path).name for e in result.entries]
    suffixes = {Path(n).suffix for n in names}
    common = suffixes.pop() if len(suffixes) == 1 and all(Path(n).stem for n in names) else ""
    title = f"{len(result.entries)} checkpoint(s), epoch from {result.epoch_source}"
    headers = ("epoch", "WCI ± SE", "gap_loss", "gap_err", "rob.acc T", "rob.loss T")
    rows = []
    for e, name in zip(result.entries, names, strict=True):
        m = e.result.metrics
        figures = [
            fmt_estimate(e.epoch, digits=6),
            fmt_estimate(e.result.wci, e.result.wci_se or None),
            *(fmt_fixed(v) for v in (m.gap_loss, m.gap_err, m.robust_acc_test, m.robust_loss_test)),
        ]
        rows.append((name.removesuffix(common) if common else name, e.cached, figures))
    others = sum(max([len(h)] + [len(r[2][i]) for r in rows]) for i, h in enumerate(headers))
    room = max(10, width - others - (3 * (len(headers) + 1) - 1))
    table = Table(
        title=title + (f"; names without {common}" if common else ""),
        title_justify="left",
        show_edge=False,
    )
    lines = [break_lines(name, room) for name, _, _ in rows]
    longest = max((len(piece) for ls in lines for piece in ls), default=10)
    table.add_column(headers[0], justify="right", no_wrap=True)
    table.add_column("checkpoint", overflow="fold", min_width=min(room, max(10, longest)))
    for header in headers[1:]:
        table.add_column(header, justify="right", no_wrap=True)
    for (_, cached, figures), name_lines in zip(rows, lines, strict=True):
        cell = Text("\n".join(name_lines))
        if cached:
            cell.append("\n(cache)", style="dim")
        table.add_row(figures[0], cell, *figures[1:])
    return table


def _print_summary(result: TrackResult) -> None:
    out.print(_checkpoint_table(result, out.width))
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
