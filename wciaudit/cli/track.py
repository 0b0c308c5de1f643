"""``wciaudit track``: scan every checkpoint of a training run and relate WCI to the robust gap."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..config import Attack, CurvatureMethod, Norm, ScanConfig, parse_eps
from ..errors import ConfigError
from ..track import MEASURES, TARGETS, TrackResult, write_track_page
from ..track import track as run_track
from .common import QuietOpt, err, handle_errors, out

_D = ScanConfig()


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


@contextmanager
def _track_bars(enabled: bool) -> Iterator[Callable[[str, int, int | None], None] | None]:
    """One bar for the checkpoints, and per-stage bars that restart with each scan."""
    if not enabled:
        yield None
        return
    labels = {"checkpoints": "Checkpoints", "attack-train": "PGD on train", "attack-test": "PGD on test",
              "curvature": "Hessian traces"}
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=not sys.stderr.isatty(),
    ) as bar:
        tasks: dict[str, Any] = {}

        def callback(stage: str, advance: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(tasks[stage], advance=advance)
            if stage == "checkpoints":  # the next scan starts its stages from zero
                for name, task in tasks.items():
                    if name != "checkpoints":
                        bar.reset(task)

        yield callback


@handle_errors
def track(
    run: Annotated[list[str], typer.Argument(help="A run folder (its *.safetensors/*.pt/*.pth/*.bin files and timm sub-folders), a glob such as 'run/epoch_*.safetensors', or checkpoint files.", show_default=False)],
    data: Annotated[str | None, typer.Option("--data", "-d", help="sample | file.npz | DIR (ImageFolder) | cifar10:DIR | cifar100:DIR. Default: the dataset each checkpoint names.")] = None,
    arch: Annotated[str | None, typer.Option(help="timm model name, or a custom class: models.py:ClassName, package.module:ClassName, or models.py (class from the metadata key 'arch').")] = None,
    arch_args: Annotated[str | None, typer.Option("--arch-args", help="Constructor arguments as JSON, e.g. '{\"width\": 16}'.")] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", help="Number of classes (default: from the checkpoint).")] = None,
    mean: Annotated[str | None, typer.Option(help="Input normalisation mean, comma-separated (default: from the checkpoint).")] = None,
    std: Annotated[str | None, typer.Option(help="Input normalisation std, comma-separated.")] = None,
    eps: Annotated[str, typer.Option(help="Attack radius in input units: 8/255, 0.03, ...")] = "8/255",
    attack: Annotated[Attack, typer.Option(help="pgd: random start + K steps; fgsm: one step of size eps.")] = _D.attack,
    norm: Annotated[Norm, typer.Option(help="Threat-model norm.")] = _D.norm,
    steps: Annotated[int, typer.Option(help="PGD steps K.")] = _D.steps,
    step_size: Annotated[float | None, typer.Option("--step-size", help="PGD step alpha [default: 2.5*eps/K].", show_default=False)] = None,
    restarts: Annotated[int, typer.Option(help="PGD restarts; each example keeps its worst loss.")] = _D.restarts,
    hessian_samples: Annotated[int, typer.Option("--hessian-samples", help="Train examples the Hessian is taken over.")] = _D.hessian_samples,
    tol: Annotated[float, typer.Option(help="Target relative standard error per layer trace.")] = _D.tol,
    max_probes: Annotated[int, typer.Option("--max-probes", help="Hutchinson probe cap per layer.")] = _D.max_probes,
    curvature: Annotated[CurvatureMethod, typer.Option(help="auto: exact Gauss-Newton route where exact and cheaper, else Hutchinson.")] = _D.curvature,
    delta: Annotated[float, typer.Option(help="PAC-Bayes confidence delta.")] = _D.delta,
    seed: Annotated[int, typer.Option(help="Seed for attack starts, subsets and probes (the same for every checkpoint).")] = _D.seed,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = _D.device,
    dtype: Annotated[str, typer.Option(help="float32 | float64 (small models).")] = _D.dtype,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per forward pass.")] = _D.batch_size,
    train_samples: Annotated[int | None, typer.Option("--train-samples", help="Seeded stratified subset of the train split (use the run's own training subset where it had one).")] = None,
    test_samples: Annotated[int | None, typer.Option("--test-samples", help="Seeded stratified subset of the test split.")] = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="Folder of per-checkpoint results [default: RUN/.wciaudit-cache].", file_okay=False, show_default=False)] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Scan every checkpoint again (the cache is then refreshed).")] = False,
    html: Annotated[Path | None, typer.Option("--output", "-o", help="The HTML page [default: <run name>.track.html in the current folder].", dir_okay=False, show_default=False)] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="The JSON series [default: <run name>.track.json in the current folder].", dir_okay=False, show_default=False)] = None,
    quiet: QuietOpt = False,
) -> None:
    """Scan every checkpoint of a training run; curves, WCI-gap rank correlations, resumable."""
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
    stem = Path(run[0].rstrip("/\\")).name.split("*")[0].rstrip("_-.") or "run"
    stem = stem.removesuffix(Path(stem).suffix) if Path(run[0]).is_file() else stem
    html_path = html or Path.cwd() / f"{stem}.track.html"
    json_target = json_path or Path.cwd() / f"{stem}.track.json"
    for target in (html_path, json_target):
        if not target.parent.is_dir():
            raise ConfigError(f"output folder does not exist: {target.parent}")
    with _track_bars(not quiet) as progress:
        result = run_track(
            run, data, config=config, arch=arch, arch_args=parsed_args, num_classes=num_classes,
            mean=_floats(mean, "--mean"), std=_floats(std, "--std"), cache_dir=cache,
            use_cache=not no_cache, progress=progress,
        )
    written = [result.save(json_target), write_track_page(result, html_path)]
    if not quiet:
        _print_summary(result)
        for path in written:
            out.print(f"wrote {path}", markup=False)


def _num(value: Any, fmt: str = ".4g") -> str:
    return "–" if value is None else format(value, fmt)


def _print_summary(result: TrackResult) -> None:
    table = Table(title=f"{len(result.entries)} checkpoint(s), epoch from {result.epoch_source}", title_justify="left")
    for name in ("epoch", "checkpoint", "WCI ± SE", "gap_loss", "gap_err", "rob.acc T", "rob.loss T", "from"):
        table.add_column(name, justify="left" if name in ("checkpoint", "from") else "right",
                         no_wrap=name == "checkpoint")
    for e in result.entries:
        m = e.result.metrics
        se = e.result.wci_se
        wci = _num(e.result.wci) + (f" ± {se:.2g}" if se else "")
        table.add_row(
            _num(e.epoch, "g"), Path(e.path).name, wci, _num(m.gap_loss, ".3f"), _num(m.gap_err, ".3f"),
            _num(m.robust_acc_test, ".3f"), _num(m.robust_loss_test, ".3f"), "cache" if e.cached else "scan",
        )
    out.print(table)
    corr = Table(title="Rank correlation with the robust gap (Kendall tau / Spearman rho)", title_justify="left")
    corr.add_column("measure")
    for t in TARGETS:
        corr.add_column(f"vs {t}", justify="right")
    for m, label in MEASURES.items():
        cells = []
        for t in TARGETS:
            c = result.correlation(m, t)
            cells.append("–" if c is None or c.kendall_tau is None else f"{c.kendall_tau:+.3f} / {c.spearman_rho:+.3f}")
        corr.add_row(label, *cells)
    out.print(corr)
    markers = result.markers()
    best, peak = markers["best_robust_test_loss"], markers["wci_peak"]
    if best is not None:
        out.print(f"lowest robust test loss at epoch {best['epoch']:g} ({best['robust_loss_test']:.4g}); robust overfitting after it")
    if peak is not None:
        out.print(f"WCI peaks at epoch {peak['epoch']:g} ({peak['wci']:.4g})")
    for note in result.notes:
        out.print(f"note: {note}", markup=False)
    out.print(f"{result.scanned} scanned, {len(result.entries) - result.scanned} from the cache"
              + (f" ({result.cache_dir})" if result.cache_dir else ""), markup=False)
