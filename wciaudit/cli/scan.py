"""``wciaudit scan``: audit one checkpoint and write the JSON result (and the HTML report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..config import Attack, CurvatureMethod, Norm, ScanConfig, parse_eps
from ..distributed import Shard, leave, shard_from_env
from ..errors import ConfigError
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
from .summary import print_summary

_D = ScanConfig()


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated numbers like 0.485,0.456,0.406, got {text!r}") from None
    if not values:
        raise ConfigError(f"{name} is empty")
    return values


@handle_errors
def scan(
    checkpoint: Annotated[Path, typer.Argument(help="A .safetensors file, a timm checkpoint folder (config.json + model.safetensors), or a .pt/.pth/.bin state_dict.", show_default=False)],
    data: Annotated[str | None, typer.Option("--data", "-d", help="sample | file.npz | DIR (ImageFolder: DIR/train, DIR/test or val) | cifar10:DIR | cifar100:DIR. Default: the dataset the checkpoint names, else the shipped sample if the model takes its shape.")] = None,
    arch: Annotated[str | None, typer.Option(help="timm model name, or a custom class: models.py:ClassName, package.module:ClassName, or models.py (class from the metadata key 'arch').")] = None,
    arch_args: Annotated[str | None, typer.Option("--arch-args", help="Constructor arguments as JSON, e.g. '{\"width\": 16}'.")] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", help="Number of classes (default: from the checkpoint).")] = None,
    mean: Annotated[str | None, typer.Option(help="Input normalisation mean, comma-separated (default: from the checkpoint's config).")] = None,
    std: Annotated[str | None, typer.Option(help="Input normalisation std, comma-separated.")] = None,
    eps: Annotated[str, typer.Option(help="Attack radius in input units: 8/255, 0.03, ...")] = "8/255",
    attack: Annotated[Attack, typer.Option(help="pgd: random start + K steps; fgsm: one step of size eps.")] = _D.attack,
    norm: Annotated[Norm, typer.Option(help="Threat-model norm.")] = _D.norm,
    steps: Annotated[int, typer.Option(help="PGD steps K.")] = _D.steps,
    step_size: Annotated[float | None, typer.Option("--step-size", help="PGD step alpha (default: 2.5*eps/K).", show_default=False)] = None,
    restarts: Annotated[int, typer.Option(help="PGD restarts; each example keeps its worst loss.")] = _D.restarts,
    hessian_samples: Annotated[int, typer.Option("--hessian-samples", help="Train examples the Hessian is taken over (a seeded stratified subset).")] = _D.hessian_samples,
    tol: Annotated[float, typer.Option(help="Target relative standard error per layer trace.")] = _D.tol,
    max_probes: Annotated[int, typer.Option("--max-probes", help="Hutchinson probe cap per layer.")] = _D.max_probes,
    curvature: Annotated[CurvatureMethod, typer.Option(help="auto: exact Gauss-Newton route where exact and cheaper, else Hutchinson.")] = _D.curvature,
    delta: Annotated[float, typer.Option(help="PAC-Bayes confidence delta.")] = _D.delta,
    seed: Annotated[int, typer.Option(help="Seed for attack starts, subsets and probes.")] = _D.seed,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = _D.device,
    dtype: Annotated[str, typer.Option(help="float32 | float64 (small models).")] = _D.dtype,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per forward pass.")] = _D.batch_size,
    train_samples: Annotated[int | None, typer.Option("--train-samples", help="Seeded stratified subset of the train split.")] = None,
    test_samples: Annotated[int | None, typer.Option("--test-samples", help="Seeded stratified subset of the test split.")] = None,
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
    try:
        parsed_args = json.loads(arch_args) if arch_args is not None else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--arch-args is not valid JSON: {exc.msg}") from None
    config = ScanConfig(
        eps=parse_eps(eps), attack=attack, norm=norm, steps=steps, step_size=step_size,
        restarts=restarts, hessian_samples=hessian_samples, tol=tol, max_probes=max_probes,
        curvature=curvature, delta=delta, seed=seed, device=device, dtype=dtype,
        batch_size=batch_size, train_samples=train_samples, test_samples=test_samples,
    )
    target = json_path or Path.cwd() / f"{checkpoint_stem(checkpoint)}.wciaudit.json"
    if not target.parent.is_dir():
        raise ConfigError(f"output folder does not exist: {target.parent}")
    if html is not None and not html.parent.is_dir():
        raise ConfigError(f"output folder does not exist: {html.parent}")
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
                str(checkpoint), data, config=config, arch=arch, arch_args=parsed_args,
                num_classes=num_classes, mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
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
