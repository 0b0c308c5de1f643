"""``wciaudit scan``: audit one checkpoint and write the JSON result (and the HTML report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..distributed import Shard, leave, shard_from_env
from ..scan import checkpoint_stem
from ..scan import scan as run_scan
from .common import check_output_folders, handle_errors, out, progress_bars
from .gating import GateSetup, report_gates
from .options import (
    HtmlOpt,
    JsonOpt,
    QuietOpt,
    ScanSettings,
    gate_options,
    scan_options,
    with_options,
)
from .summary import print_summary


@handle_errors
@with_options(settings=scan_options, gates=gate_options)
def scan(
    checkpoint: Annotated[Path, typer.Argument(help="A .safetensors file, a timm checkpoint folder (config.json + model.safetensors), or a .pt/.pth/.bin state_dict.", show_default=False)],
    *,
    settings: ScanSettings,
    weights_only: Annotated[bool, typer.Option("--weights-only", help="Weight norms and parameter inventory only; no data, no attack.")] = False,
    json_path: JsonOpt = None,
    html: HtmlOpt = None,
    gates: GateSetup,
    distributed: Annotated[bool, typer.Option("--distributed", help="Run as one process of a torchrun group (NCCL on GPUs, gloo on CPU): each process attacks and measures its shard, figures are all-reduced, rank 0 writes the outputs.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Audit a checkpoint: PGD robust gap, per-layer Hessian traces, WCI and PAC-Bayes terms."""
    target = json_path or Path.cwd() / f"{checkpoint_stem(checkpoint)}.wciaudit.json"
    check_output_folders(target, html)
    shard = shard_from_env() if distributed else Shard()
    try:
        with progress_bars(not quiet and shard.is_main) as progress:
            result = run_scan(
                str(checkpoint), settings.data, config=settings.config, **settings.loading,
                weights_only=weights_only, progress=progress, shard=shard,
            )
    finally:
        leave(shard)
    result.gate = gates.apply(result)
    if not shard.is_main:
        # every process holds the same figures, so the same gate verdict and exit code
        if not result.gate.passed:
            raise typer.Exit(1)
        return
    written = [result.save(target)]
    if html is not None:
        from ..report import write_report

        written.append(write_report([result], html))
    if not quiet:
        print_summary(result, out)
        for path in written:
            out.print(f"wrote {path}", markup=False)
    code = report_gates(result, gates, quiet=quiet)
    if code:
        raise typer.Exit(code)
