"""Options shared by every command that runs scans (``scan``, ``track``): one declaration,
one set of defaults (those of :class:`ScanConfig`), one way to turn them into settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import Attack, CurvatureMethod, Norm, ScanConfig, parse_eps
from ..errors import ConfigError

DEFAULTS = ScanConfig()

DataOpt = Annotated[str | None, typer.Option("--data", "-d", help="sample | file.npz | DIR (ImageFolder: DIR/train, DIR/test or val) | cifar10:DIR | cifar100:DIR. Default: the dataset the checkpoint names, else the shipped sample if the model takes its shape.")]
ArchOpt = Annotated[str | None, typer.Option(help="timm model name, or a custom class: models.py:ClassName, package.module:ClassName, or models.py (class from the metadata key 'arch').")]
ArchArgsOpt = Annotated[str | None, typer.Option("--arch-args", help="Constructor arguments as JSON, e.g. '{\"width\": 16}'.")]
NumClassesOpt = Annotated[int | None, typer.Option("--num-classes", help="Number of classes (default: from the checkpoint).")]
MeanOpt = Annotated[str | None, typer.Option(help="Input normalisation mean, comma-separated (default: from the checkpoint's config).")]
StdOpt = Annotated[str | None, typer.Option(help="Input normalisation std, comma-separated.")]
EpsOpt = Annotated[str, typer.Option(help="Attack radius in input units: 8/255, 0.03, ...")]
AttackOpt = Annotated[Attack, typer.Option(help="pgd: random start + K steps; fgsm: one step of size eps.")]
NormOpt = Annotated[Norm, typer.Option(help="Threat-model norm.")]
StepsOpt = Annotated[int, typer.Option(help="PGD steps K.")]
StepSizeOpt = Annotated[float | None, typer.Option("--step-size", help="PGD step alpha (default: 2.5*eps/K).", show_default=False)]
RestartsOpt = Annotated[int, typer.Option(help="PGD restarts; each example keeps its worst loss.")]
HessianSamplesOpt = Annotated[int, typer.Option("--hessian-samples", help="Train examples the Hessian is taken over (a seeded stratified subset).")]
TolOpt = Annotated[float, typer.Option(help="Target relative standard error per layer trace.")]
MaxProbesOpt = Annotated[int, typer.Option("--max-probes", help="Hutchinson probe cap per layer.")]
CurvatureOpt = Annotated[CurvatureMethod, typer.Option(help="auto: exact Gauss-Newton route where exact and cheaper, else Hutchinson.")]
DeltaOpt = Annotated[float, typer.Option(help="PAC-Bayes confidence delta.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for attack starts, subsets and probes.")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
DtypeOpt = Annotated[str, typer.Option(help="float32 | float64 (small models).")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Examples per forward pass.")]
TrainSamplesOpt = Annotated[int | None, typer.Option("--train-samples", help="Seeded stratified subset of the train split.")]
TestSamplesOpt = Annotated[int | None, typer.Option("--test-samples", help="Seeded stratified subset of the test split.")]


def scan_settings(
    *, eps: str, arch_args: str | None, mean: str | None, std: str | None, **settings: Any
) -> tuple[ScanConfig, dict[str, Any]]:
    """The :class:`ScanConfig` and the checkpoint-loading options from parsed flags."""
    try:
        parsed_args = json.loads(arch_args) if arch_args is not None else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--arch-args is not valid JSON: {exc.msg}") from None
    config = ScanConfig(eps=parse_eps(eps), **settings)
    loading = {"arch_args": parsed_args, "mean": _floats(mean, "--mean"), "std": _floats(std, "--std")}
    return config, loading


def check_folder(*paths: Path | None) -> None:
    """Outputs go only into folders that exist (checked before any work)."""
    for path in paths:
        if path is not None and not path.parent.is_dir():
            raise ConfigError(f"output folder does not exist: {path.parent}")


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated numbers like 0.5 or 0.485,0.456,0.406, got {text!r}") from None
    if not values:
        raise ConfigError(f"{name} is empty")
    return values
