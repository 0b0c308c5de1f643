"""The checkpoint table of ``wciaudit track`` at 80 columns: names break only between
their parts, the shared suffix is said once, and where names still do not fit the epoch
moves under the name."""

from __future__ import annotations

from rich.console import Console

from wciaudit.cli.track_table import checkpoint_table
from wciaudit.result import AuditResult
from wciaudit.track import TrackEntry, TrackResult


def _run(names: list[str], cached: int | None = None) -> TrackResult:
    entries = []
    for i, name in enumerate(names):
        r = AuditResult(wci=385.5 + i, wci_se=3.84)
        m = r.metrics
        m.gap_loss, m.gap_err, m.robust_acc_test, m.robust_loss_test = 0.5904, 0.1878, 0.789, 0.68
        entries.append(TrackEntry(float(i + 1), f"run/{name}", "ab" * 32, i == cached, r))
    return TrackResult(entries=entries, epoch_source="file name")


def _cells(run: TrackResult, width: int = 80) -> tuple[str, list[str]]:
    console = Console(width=width, record=True)
    console.print(checkpoint_table(run, width))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    column = 1 if "┃ epoch" in text.splitlines()[1] or " epoch ┃" in text else 0
    cells = [line.split("│")[column].strip() for line in text.splitlines() if "│" in line]
    return text, cells


def test_short_names_stay_whole_beside_an_epoch_column():
    text, cells = _cells(_run(["epoch_1.safetensors", "epoch_10.safetensors"], cached=1))
    assert "names without .safetensors" in text
    assert " epoch ┃" in text
    assert cells[:3] == ["epoch_1", "epoch_10", "(cache)"]


def test_long_names_break_only_after_a_separator(width=80):
    names = [f"checkpoint_epoch_{e:03d}.safetensors" for e in (1, 10, 40)]
    text, cells = _cells(_run(names), width)
    names_only = [c for c in cells if c and not c.startswith("epoch ")]
    assert "".join(names_only) == "".join(n.removesuffix(".safetensors") for n in names)
    pieces = iter(names_only)
    for name in names:
        seen = ""
        while seen != name.removesuffix(".safetensors"):
            piece = next(pieces)
            if seen + piece != name.removesuffix(".safetensors"):
                assert piece[-1] in "._-", (piece, names_only)  # broken after a separator
            seen += piece
    # too long for an epoch column at this width: the epoch is said under the name
    assert " epoch ┃" not in text and [c for c in cells if c.startswith("epoch ")] == [
        "epoch 1",
        "epoch 2",
        "epoch 3",
    ]


def test_mixed_suffixes_are_kept():
    text, cells = _cells(_run(["a.safetensors", "b.pt"]))
    assert "names without" not in text
    assert "a.safetensors" in cells and "b.pt" in cells


def test_a_short_name_beside_wide_figures_still_fits_80_columns():
    """Room for the name is below 10 with an epoch column here: the epoch moves under
    the name rather than the last column being cut (``rob.loss T`` / ``2.240``)."""
    run = _run(["epoch_1.safetensors"])
    run.entries[0].result.wci, run.entries[0].result.wci_se = 8.274, 0.057
    text, cells = _cells(run)
    assert "rob.loss T" in text and "0.680" in text
    assert cells[:2] == ["epoch_1", "epoch 1"]
