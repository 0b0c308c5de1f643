"""The checkpoint table of ``wciaudit track``'s summary, readable at 80 columns.

A file name breaks only between its parts (``robust_`` / ``epoch_040``), never inside a
word (rich would fold ``epoch_1.safetensors`` into ``epoch_1.sa`` / ``fetensors``):
the suffix every file shares is said once in the title, "(cache)" goes under the name,
and where the names still do not fit beside the figures, the epoch moves from its own
column to the line under the name.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text

from ..formatting import break_lines, fmt_estimate, fmt_fixed
from ..track import TrackEntry, TrackResult

__all__ = ["checkpoint_table"]

#: the figure columns, after the checkpoint's name
FIGURES = ("WCI ± SE", "gap_loss", "gap_err", "rob.acc T", "rob.loss T")


def checkpoint_table(result: TrackResult, width: int) -> Table:
    """The run's checkpoints, one row each, for a console ``width`` columns wide."""
    names = [Path(e.path).name for e in result.entries]
    suffixes = {Path(n).suffix for n in names}
    common = suffixes.pop() if len(suffixes) == 1 and all(Path(n).stem for n in names) else ""
    epochs = [fmt_estimate(e.epoch, digits=6) for e in result.entries]
    figures = [_figures(e) for e in result.entries]
    short = [n.removesuffix(common) for n in names]
    widths = [max([len(h)] + [len(f[i]) for f in figures]) for i, h in enumerate(FIGURES)]
    # rich: one space each side of every cell, one rule between columns
    room = width - sum(widths) - 3 * (len(FIGURES) + 1) + 1
    epoch_width = max([len("epoch")] + [len(e) for e in epochs]) + 3
    longest = max((len(p) for n in short for p in break_lines(n, 1)), default=0)
    # the epoch keeps its own column only where the names keep room for their longest
    # part (up to 20 characters), and never less than 10
    epoch_column = room - epoch_width >= max(10, min(longest, 20))
    if epoch_column:
        room -= epoch_width
    room = max(room, 10)
    title = f"{len(names)} checkpoint(s), epoch from {result.epoch_source}"
    table = Table(
        title=title + (f"; names without {common}" if common else ""),
        title_justify="left",
        show_edge=False,
    )
    if epoch_column:
        table.add_column("epoch", justify="right", no_wrap=True)
    lines = [break_lines(n, room) for n in short]
    widest = max((len(p) for ls in lines for p in ls), default=10)
    table.add_column("checkpoint", overflow="fold", min_width=min(room, max(10, widest)))
    for header in FIGURES:
        table.add_column(header, justify="right", no_wrap=True)
    for e, epoch, name_lines, row in zip(result.entries, epochs, lines, figures, strict=True):
        cell = Text("\n".join(name_lines))
        under = ([] if epoch_column else [f"epoch {epoch}"]) + (["(cache)"] if e.cached else [])
        if under:
            cell.append("\n" + " ".join(under), style="dim")
        table.add_row(*([epoch] if epoch_column else []), cell, *row)
    return table


def _figures(entry: TrackEntry) -> list[str]:
    r, m = entry.result, entry.result.metrics
    return [
        fmt_estimate(r.wci, r.wci_se or None),
        *(fmt_fixed(v) for v in (m.gap_loss, m.gap_err, m.robust_acc_test, m.robust_loss_test)),
    ]
