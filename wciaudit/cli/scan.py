"""``wciaudit scan``: audit one checkpoint and write the JSON result (and the HTML report)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from ..config import LoadOptions
from ..result import AuditResult
from .common import (
    StopSignals,
    check_output_folders,
    handle_errors,
    out,
    progress_bars,
    stopped,
)
from .gating import GateSetup, report_gates
from .options import (
    CsvOpt,
    PlotlyMode,
    PlotlyOpt,
    QuietOpt,
    ScanSettings,
    VerboseOpt,
    field_group,
    gate_options,
    scan_options,
    with_options,
)
from .summary import print_summary, print_time_shares
from .threads import apply_thread_policy

# the help of scan's own options whose text would not leave the signature readable
CHECKPOINT_HELP = (
    "A .safetensors file, a timm or transformers checkpoint folder (config.json + "
    "model.safetensors), a .pt/.pth/.bin state_dict, or a Lightning .ckpt."
)
JSON_HELP = (
    "Where to write the JSON result (default: <checkpoint name>.wciaudit.json in the current "
    "folder). A scan stopped by SIGTERM or Ctrl-C after its attack stage writes the stages that "
    "finished here, marked incomplete."
)
DISTRIBUTED_HELP = (
    "Run as one process of a torchrun group: each process attacks and measures its shard, "
    "figures are all-reduced, rank 0 writes the outputs. --device picks the device (cuda: "
    "cuda:LOCAL_RANK, or cuda:0 where a process sees one device; cpu: gloo on the CPU even on "
    "a GPU host)."
)


@handle_errors
@with_options(
    settings=scan_options,
    weights_only=field_group(LoadOptions, "weights_only"),
    gates=gate_options,
)
def scan(
    checkpoint: Annotated[Path, typer.Argument(help=CHECKPOINT_HELP, show_default=False)],
    *,
    settings: ScanSettings,
    weights_only: bool,
    json_path: Annotated[
        Path | None, typer.Option("--json", help=JSON_HELP, dir_okay=False)
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html", help="Also write the self-contained HTML report here.", dir_okay=False
        ),
    ] = None,
    plotly: PlotlyOpt = PlotlyMode.inline,
    csv_path: CsvOpt = None,
    gates: GateSetup,
    distributed: Annotated[bool, typer.Option("--distributed", help=DISTRIBUTED_HELP)] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    stop: StopSignals,
) -> None:
    """Audit a checkpoint: PGD robust gap, per-layer Hessian traces, WCI and PAC-Bayes terms."""
    # first: the load the policy reads is not yet this process's own work
    config, policy = apply_thread_policy(settings.config, verbose=verbose and not quiet)
    # here, not at the top: registering the command (``wciaudit gate``, ``--help``) needs no torch
    from ..distributed import Shard, leave, shard_from_env
    from ..pipeline import checkpoint_stem
    from ..pipeline import scan as run_scan

    target = json_path or Path.cwd() / f"{checkpoint_stem(checkpoint)}.wciaudit.json"
    check_output_folders(target, html, csv_path)
    shard = shard_from_env(settings.config.device) if distributed else Shard()
    kept: list[AuditResult] = []
    failed = True
    try:
        with progress_bars(not quiet and shard.is_main) as progress:
            result = run_scan(
                str(checkpoint),
                settings.data,
                config=config,
                options=replace(settings.options, weights_only=weights_only),
                progress=progress,
                on_stage=lambda _stage, partial: kept.append(policy.record(partial)),
                shard=shard,
            )
        failed = False
    except BaseException:
        if shard.is_main and kept:
            keep_finished_stages(kept[-1], target, stop.signum, skipped=html or csv_path)
        raise
    finally:
        leave(shard, failed=failed)
    policy.record(result)
    result.gate = gates.apply(result)
    if not shard.is_main:
        # every process holds the same figures, so the same gate verdict and exit code
        if not result.gate.passed:
            raise typer.Exit(1)
        return
    written = write_outputs(result, target, html, plotly, csv_path)
    if not quiet:
        print_summary(result, out)
        if verbose:
            print_time_shares(result, out)
        for path in written:
            out.print(f"wrote {path}", markup=False)
    code = report_gates(result, gates, quiet=quiet)
    if code:
        raise typer.Exit(code)


def keep_finished_stages(
    partial: AuditResult, target: Path, signum: int | None, *, skipped: Path | None
) -> None:
    """When a signal (``signum``, None for none) stops the scan after its attack stage,
    write the stages that finished to the JSON path, marked incomplete, and end with one
    line (exit 130 or 143). Before that stage, or on any other exception, nothing is
    written. The HTML report and the CSV are not written for an incomplete result
    (``skipped``: one was asked for): they would look like a finished audit once shared;
    ``wciaudit report`` renders the JSON later with the incompleteness stated on the page."""
    if signum is None or "attack" not in partial.stages:
        return
    path = partial.save(target)
    tail = "; no HTML report or CSV for an incomplete result" if skipped is not None else ""
    raise stopped(
        signum,
        f"wrote the incomplete result {path} (stopped during the {partial.stopped_at} "
        f"stage; finished: {', '.join(partial.stages)}){tail}",
    ) from None


def write_outputs(
    result: AuditResult, target: Path, html: Path | None, plotly: PlotlyMode, csv_path: Path | None
) -> list[Path]:
    """The JSON result, and the HTML report and the CSV table where asked for."""
    written = [result.save(target)]
    if html is not None:
        from ..report import write_report

        written.append(write_report([result], html, plotly=plotly.value))
    if csv_path is not None:
        from ..export import write_csv

        written.append(write_csv([result], csv_path))
    return written
