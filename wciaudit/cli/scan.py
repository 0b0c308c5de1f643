"""``wciaudit scan``: audit one checkpoint and write the JSON result (and the HTML report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..distributed import Shard, leave, shard_from_env
from ..scan import checkpoint_stem
from ..scan import scan as run_scan
from .common import HtmlOpt, JsonOpt, QuietOpt, handle_errors, out, progress_bars
from .gate import (
    BaselineOpt,
    ConfigOpt,
    GateSigmasOpt,
    MaxBoundOpt,
    MaxGapErrOpt,
    MaxGapLossOpt,
    MaxWciIncreaseOpt,
    MaxWciOpt,
    MinRobustAccOpt,
    SummaryMdOpt,
    check_output,
    prepare_gates,
    report_gates,
)
from .scan_options import (
    DEFAULTS,
    ArchArgsOpt,
    ArchOpt,
    AttackOpt,
    BatchSizeOpt,
    CurvatureOpt,
    DataOpt,
    DeltaOpt,
    DeviceOpt,
    DtypeOpt,
    EpsOpt,
    HessianSamplesOpt,
    MaxProbesOpt,
    MeanOpt,
    NormOpt,
    NumClassesOpt,
    RestartsOpt,
    SeedOpt,
    StdOpt,
    StepSizeOpt,
    StepsOpt,
    TestSamplesOpt,
    TolOpt,
    TrainSamplesOpt,
    check_folder,
    scan_settings,
)
from .summary import print_summary


@handle_errors
def scan(
    checkpoint: Annotated[Path, typer.Argument(help="A .safetensors file, a timm checkpoint folder (config.json + model.safetensors), or a .pt/.pth/.bin state_dict.", show_default=False)],
    data: DataOpt = None,
    arch: ArchOpt = None,
    arch_args: ArchArgsOpt = None,
    num_classes: NumClassesOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    eps: EpsOpt = "8/255",
    attack: AttackOpt = DEFAULTS.attack,
    norm: NormOpt = DEFAULTS.norm,
    steps: StepsOpt = DEFAULTS.steps,
    step_size: StepSizeOpt = None,
    restarts: RestartsOpt = DEFAULTS.restarts,
    hessian_samples: HessianSamplesOpt = DEFAULTS.hessian_samples,
    tol: TolOpt = DEFAULTS.tol,
    max_probes: MaxProbesOpt = DEFAULTS.max_probes,
    curvature: CurvatureOpt = DEFAULTS.curvature,
    delta: DeltaOpt = DEFAULTS.delta,
    seed: SeedOpt = DEFAULTS.seed,
    device: DeviceOpt = DEFAULTS.device,
    dtype: DtypeOpt = DEFAULTS.dtype,
    batch_size: BatchSizeOpt = DEFAULTS.batch_size,
    train_samples: TrainSamplesOpt = None,
    test_samples: TestSamplesOpt = None,
    weights_only: Annotated[bool, typer.Option("--weights-only", help="Weight norms and parameter inventory only; no data, no attack.")] = False,
    json_path: JsonOpt = None,
    html: HtmlOpt = None,
    max_wci: MaxWciOpt = None,
    max_gap_loss: MaxGapLossOpt = None,
    max_gap_err: MaxGapErrOpt = None,
    min_robust_acc: MinRobustAccOpt = None,
    max_bound: MaxBoundOpt = None,
    baseline: BaselineOpt = None,
    max_wci_increase: MaxWciIncreaseOpt = None,
    gate_sigmas: GateSigmasOpt = None,
    config_file: ConfigOpt = None,
    summary_md: SummaryMdOpt = None,
    distributed: Annotated[bool, typer.Option("--distributed", help="Run as one process of a torchrun group (NCCL on GPUs, gloo on CPU): each process attacks and measures its shard, figures are all-reduced, rank 0 writes the outputs.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Audit a checkpoint: PGD robust gap, per-layer Hessian traces, WCI and PAC-Bayes terms."""
    config, loading = scan_settings(
        eps=eps, arch_args=arch_args, mean=mean, std=std, attack=attack, norm=norm, steps=steps,
        step_size=step_size, restarts=restarts, hessian_samples=hessian_samples, tol=tol,
        max_probes=max_probes, curvature=curvature, delta=delta, seed=seed, device=device,
        dtype=dtype, batch_size=batch_size, train_samples=train_samples, test_samples=test_samples,
    )
    target = json_path or Path.cwd() / f"{checkpoint_stem(checkpoint)}.wciaudit.json"
    check_folder(target, html)
    check_output(summary_md)
    # a bad gate config or baseline is a usage error: exit 2 before the expensive scan
    gates = prepare_gates(
        config_file=config_file, baseline=baseline, max_wci=max_wci, max_gap_loss=max_gap_loss,
        max_gap_err=max_gap_err, min_robust_acc=min_robust_acc, max_bound=max_bound,
        max_wci_increase=max_wci_increase, gate_sigmas=gate_sigmas,
    )
    shard = shard_from_env() if distributed else Shard()
    try:
        with progress_bars(not quiet and shard.is_main) as progress:
            result = run_scan(
                str(checkpoint), data, config=config, arch=arch, arch_args=loading["arch_args"],
                num_classes=num_classes, mean=loading["mean"], std=loading["std"],
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
            out.print(f"wrote {path}")
    code = report_gates(result, gates, summary_md=summary_md, quiet=quiet)
    if code:
        raise typer.Exit(code)
