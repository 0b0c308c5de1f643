"""``wciaudit track``: scan every checkpoint of a training run and relate WCI to the robust gap."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..track import MEASURES, TARGETS, TrackResult, write_track_page
from ..track import track as run_track
from .common import QuietOpt, handle_errors, out, progress_bars
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


@handle_errors
def track(
    run: Annotated[list[str], typer.Argument(help="A run folder (its *.safetensors/*.pt/*.pth/*.bin files and timm sub-folders), a glob such as 'run/epoch_*.safetensors', or checkpoint files.", show_default=False)],
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
    cache: Annotated[Path | None, typer.Option("--cache", help="Folder of per-checkpoint results [default: RUN/.wciaudit-cache].", file_okay=False, show_default=False)] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Scan every checkpoint again (the cache is then refreshed).")] = False,
    html: Annotated[Path | None, typer.Option("--output", "-o", help="The HTML page [default: <run name>.track.html in the current folder].", dir_okay=False, show_default=False)] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="The JSON series [default: <run name>.track.json in the current folder].", dir_okay=False, show_default=False)] = None,
    quiet: QuietOpt = False,
) -> None:
    """Scan every checkpoint of a training run; curves, WCI-gap rank correlations, resumable."""
    config, loading = scan_settings(
        eps=eps, arch_args=arch_args, mean=mean, std=std, attack=attack, norm=norm, steps=steps,
        step_size=step_size, restarts=restarts, hessian_samples=hessian_samples, tol=tol,
        max_probes=max_probes, curvature=curvature, delta=delta, seed=seed, device=device,
        dtype=dtype, batch_size=batch_size, train_samples=train_samples, test_samples=test_samples,
    )
    stem = Path(run[0].rstrip("/\\")).name.split("*")[0].rstrip("_-.") or "run"
    stem = stem.removesuffix(Path(stem).suffix) if Path(run[0]).is_file() else stem
    html_path = html or Path.cwd() / f"{stem}.track.html"
    json_target = json_path or Path.cwd() / f"{stem}.track.json"
    check_folder(html_path, json_target)
    with progress_bars(not quiet, restart_on="checkpoints") as progress:
        result = run_track(
            run, data, config=config, arch=arch, arch_args=loading["arch_args"], num_classes=num_classes,
            mean=loading["mean"], std=loading["std"], cache_dir=cache,
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
