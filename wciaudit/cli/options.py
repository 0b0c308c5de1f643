"""Every command-line option that more than one command takes, declared once.

Options are ``Annotated`` aliases. Two groups are shared whole: the scan options
(``scan``, ``track``) and the gate options (``scan``, ``gate``). A group is a function
whose parameters declare its options (their defaults those of :class:`ScanConfig`) and
which turns their values into one object; :func:`with_options` puts a group's options
into a command's signature in place of one keyword parameter and hands the command
that object, so a command lists neither the options nor their defaults again.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ..config import Attack, CurvatureMethod, LoadOptions, Norm, ScanConfig
from ..errors import ConfigError
from .common import check_output_folders
from .gating import GateSetup, prepare_gates

F = TypeVar("F", bound=Callable[..., Any])

DEFAULTS = ScanConfig()
GATE_PANEL = "Gates (exit 1 when one fails)"

# -- options of every command ----------------------------------------------------------------
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="No summary and no progress bars; errors still go to stderr."
    ),
]
JsonOpt = Annotated[
    Path | None,
    typer.Option(
        "--json",
        help="Where to write the JSON result (default: <checkpoint name>.wciaudit.json in the current folder). A scan stopped by SIGTERM or Ctrl-C after its attack stage writes the stages that finished here, marked incomplete.",
        dir_okay=False,
    ),
]


class PlotlyMode(str, Enum):
    """How the page gets plotly.js (``wciaudit.report.html.PLOTLY_MODES``)."""

    inline = "inline"
    cdn = "cdn"


PlotlyOpt = Annotated[
    PlotlyMode,
    typer.Option(
        "--plotly",
        help="inline: plotly.js inside the page (about 4.8 MB, opens offline); cdn: a script tag "
        "to plotly's CDN (a small file, but the charts need the network).",
    ),
]
CsvOpt = Annotated[
    Path | None,
    typer.Option(
        "--csv",
        help="Also write the layer table with the headline figures as CSV (one row per layer).",
        dir_okay=False,
        show_default=False,
    ),
]


HtmlOpt = Annotated[
    Path | None,
    typer.Option("--html", help="Also write the self-contained HTML report here.", dir_okay=False),
]


# -- options of the scan command alone ------------------------------------------------
WeightsOnlyOpt = Annotated[
    bool,
    typer.Option(
        "--weights-only", help="Weight norms and parameter inventory only; no data, no attack."
    ),
]
DistributedOpt = Annotated[
    bool,
    typer.Option(
        "--distributed",
        help="Run as one process of a torchrun group: each process attacks and measures its shard, figures are all-reduced, rank 0 writes the outputs. --device picks the device (cuda: cuda:LOCAL_RANK, or cuda:0 where a process sees one device; cpu: gloo on the CPU even on a GPU host).",
    ),
]
FailOnMaskingOpt = Annotated[
    bool,
    typer.Option(
        "--fail-on-masking",
        help="Fail when a gradient-masking check (random output among them) failed.",
        rich_help_panel=GATE_PANEL,
    ),
]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Also print the CPU threads chosen and why; scan also prints each part's share of the time (attack, masking checks, traces, attack-spread re-attack and re-measure).",
    ),
]


# -- the scan options (scan, track) --------------------------------------------------------
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="CPU threads for torch. Default: chosen per run from the CPUs this process may use (affinity, cgroup quota) less the load of other processes; OMP_NUM_THREADS, when set, is kept.",
        show_default=False,
    ),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        "-d",
        help="sample | file.npz | DIR (ImageFolder: DIR/train, DIR/test or val) | cifar10:DIR | cifar100:DIR. Default: the dataset the checkpoint names, else the shipped sample if the model takes its shape.",
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        help="timm model name, torchvision:<builder> (e.g. torchvision:resnet18), or a custom class: models.py:ClassName, package.module:ClassName, or models.py (class from the metadata key 'arch')."
    ),
]
ArchArgsOpt = Annotated[
    str | None,
    typer.Option("--arch-args", help="Constructor arguments as JSON, e.g. '{\"width\": 16}'."),
]
NumClassesOpt = Annotated[
    int | None,
    typer.Option("--num-classes", help="Number of classes (default: from the checkpoint)."),
]
MeanOpt = Annotated[
    str | None,
    typer.Option(
        help="Input normalisation mean, comma-separated (default: from the checkpoint's config)."
    ),
]
StdOpt = Annotated[str | None, typer.Option(help="Input normalisation std, comma-separated.")]
EpsOpt = Annotated[
    str | None,
    typer.Option(
        help="Attack radius in input units: 8/255, 0.03, ... (default: the checkpoint's metadata 'eps', else 8/255).",
        show_default=False,
    ),
]
AttackOpt = Annotated[
    Attack,
    typer.Option(
        help="Where robust accuracy comes from. pgd: random start + K steps; fgsm: one step of size eps; apgd-ce, apgd-t: APGD (100 steps); autoattack: standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square 5000). The robust loss and the Hessian points come from PGD/FGSM, or APGD-CE for the others."
    ),
]
NormOpt = Annotated[
    Norm | None,
    typer.Option(
        help="Threat-model norm (default: the checkpoint's metadata 'norm', else linf).",
        show_default=False,
    ),
]
InputSizeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-size",
        help="The shape of one input: C,H,W for images (3,32,32), C,L for signals (1,40), F for vectors (64) (default: from the checkpoint or timm's config).",
        show_default=False,
    ),
]
LoOpt = Annotated[float, typer.Option("--lo", help="Lowest valid input value (data range).")]
HiOpt = Annotated[float, typer.Option("--hi", help="Highest valid input value (data range).")]
MaskingSamplesOpt = Annotated[
    int,
    typer.Option(
        "--masking-samples",
        help="Test examples the gradient-masking checks run on (0: only the random-output check, on 8).",
    ),
]
AttackSpreadOpt = Annotated[
    bool,
    typer.Option(
        "--attack-spread/--no-attack-spread",
        help="Attack the Hessian subset again from other random starts, so that SEs cover the attack's starts (about doubles the curvature time).",
    ),
]
StepsOpt = Annotated[int, typer.Option(help="PGD steps K.")]
StepSizeOpt = Annotated[
    float | None,
    typer.Option("--step-size", help="PGD step alpha (default: 2.5*eps/K).", show_default=False),
]
RestartsOpt = Annotated[int, typer.Option(help="PGD restarts; each example keeps its worst loss.")]
HessianSamplesOpt = Annotated[
    int,
    typer.Option(
        "--hessian-samples",
        help="Train examples the Hessian is taken over (a seeded stratified subset).",
    ),
]
TolOpt = Annotated[
    float,
    typer.Option(
        help="Target relative standard error of WCI (probes go where they cut its variance most)."
    ),
]
LayerTolOpt = Annotated[
    float | None,
    typer.Option(
        "--layer-tol",
        help="Also hold every layer's trace to this relative standard error.",
        show_default=False,
    ),
]
KLabelsOpt = Annotated[
    int,
    typer.Option(
        "--k-labels",
        help="Labels sampled per example in the first round of the mc-ggn route (more where the tolerance asks).",
    ),
]
MaxProbesOpt = Annotated[int, typer.Option("--max-probes", help="Hutchinson probe cap per layer.")]
CurvatureOpt = Annotated[
    CurvatureMethod,
    typer.Option(
        help="auto: per layer the cheapest of exact Gauss-Newton (ggn), sampled-label Gauss-Newton (mc-ggn; both where the network is piecewise linear in the layer) and Hutchinson; the others force one route."
    ),
]
DeltaOpt = Annotated[float, typer.Option(help="PAC-Bayes confidence delta.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for attack starts, subsets and probes.")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
DtypeOpt = Annotated[str, typer.Option(help="float32 | float64 (small models).")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Examples per forward pass.")]
TrainSamplesOpt = Annotated[
    int | None, typer.Option("--train-samples", help="Seeded stratified subset of the train split.")
]
TestSamplesOpt = Annotated[
    int | None, typer.Option("--test-samples", help="Seeded stratified subset of the test split.")
]


# -- the gate options (scan, gate) ---------------------------------------------------------
MaxWciOpt = Annotated[
    float | None,
    typer.Option(
        "--max-wci",
        help="Fail when WCI exceeds this by more than --gate-sigmas SE.",
        rich_help_panel=GATE_PANEL,
        show_default=False,
    ),
]
MaxGapLossOpt = Annotated[
    float | None,
    typer.Option(
        "--max-gap-loss",
        help="Fail when the robust loss gap L_adv(T) - L_adv(S) exceeds this.",
        rich_help_panel=GATE_PANEL,
        show_default=False,
    ),
]
MaxGapErrOpt = Annotated[
    float | None,
    typer.Option(
        "--max-gap-err",
        help="Fail when the robust error gap robust_acc(S) - robust_acc(T) exceeds this.",
        rich_help_panel=GATE_PANEL,
        show_default=False,
    ),
]
MinRobustAccOpt = Annotated[
    float | None,
    typer.Option(
        "--min-robust-acc",
        help="Fail when the robust accuracy on the test split is below this fraction (0-1).",
        rich_help_panel=GATE_PANEL,
        show_default=False,
    ),
]
MaxBoundOpt = Annotated[
    float | None,
    typer.Option(
        "--max-bound",
        help="Fail when the PAC-Bayes bound exceeds this (no SE: any excess fails).",
        rich_help_panel=GATE_PANEL,
        show_default=False,
    ),
]
MaxWciIncreaseOpt = Annotated[
    str | None,
    typer.Option(
        "--max-wci-increase",
        help="Fail when WCI exceeds the baseline's by more than this: '10%' (relative) or 0.5 (absolute). Needs --baseline.",
        rich_help_panel=GATE_PANEL,
        show_default=False,
    ),
]
BaselineOpt = Annotated[
    Path | None,
    typer.Option(
        "--baseline",
        help="A baseline JSON result for --max-wci-increase.",
        dir_okay=False,
        rich_help_panel=GATE_PANEL,
        show_default=False,
    ),
]
GateSigmasOpt = Annotated[
    float | None,
    typer.Option(
        "--gate-sigmas",
        help="A gate fails only when the figure is beyond its threshold by more than this many standard errors (default 2).",
        rich_help_panel=GATE_PANEL,
        show_default=False,
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Read thresholds from this wciaudit.toml or pyproject.toml (default: the first one found from the current folder upward).",
        dir_okay=False,
        rich_help_panel=GATE_PANEL,
        show_default=False,
    ),
]
SummaryMdOpt = Annotated[
    Path | None,
    typer.Option(
        "--summary-md",
        help='Write a Markdown summary (figures and gates) here, e.g. "$GITHUB_STEP_SUMMARY".',
        dir_okay=False,
        rich_help_panel=GATE_PANEL,
        show_default=False,
    ),
]


@dataclass(frozen=True)
class ScanSettings:
    """The scan options, parsed: the data spec, the checkpoint-loading options, the config
    (its eps / norm None where the flag was not given: the checkpoint's metadata decides)."""

    data: str | None
    config: ScanConfig
    options: LoadOptions


def scan_options(
    data: DataOpt = None,
    arch: ArchOpt = None,
    arch_args: ArchArgsOpt = None,
    num_classes: NumClassesOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    input_size: InputSizeOpt = None,
    eps: EpsOpt = None,
    attack: AttackOpt = DEFAULTS.attack,
    norm: NormOpt = None,
    steps: StepsOpt = DEFAULTS.steps,
    step_size: StepSizeOpt = DEFAULTS.step_size,
    restarts: RestartsOpt = DEFAULTS.restarts,
    hessian_samples: HessianSamplesOpt = DEFAULTS.hessian_samples,
    tol: TolOpt = DEFAULTS.tol,
    layer_tol: LayerTolOpt = DEFAULTS.layer_tol,
    k_labels: KLabelsOpt = DEFAULTS.k_labels,
    max_probes: MaxProbesOpt = DEFAULTS.max_probes,
    curvature: CurvatureOpt = DEFAULTS.curvature,
    delta: DeltaOpt = DEFAULTS.delta,
    seed: SeedOpt = DEFAULTS.seed,
    device: DeviceOpt = DEFAULTS.device,
    dtype: DtypeOpt = DEFAULTS.dtype,
    batch_size: BatchSizeOpt = DEFAULTS.batch_size,
    train_samples: TrainSamplesOpt = DEFAULTS.train_samples,
    test_samples: TestSamplesOpt = DEFAULTS.test_samples,
    lo: LoOpt = DEFAULTS.lo,
    hi: HiOpt = DEFAULTS.hi,
    masking_samples: MaskingSamplesOpt = DEFAULTS.masking_samples,
    attack_spread: AttackSpreadOpt = DEFAULTS.attack_spread,
    threads: ThreadsOpt = DEFAULTS.threads,
) -> ScanSettings:
    """The options of every command that runs scans, as :class:`ScanSettings`.

    Raises:
        ConfigError: for invalid JSON in ``--arch-args``, a bad ``--mean``/``--std``
            list (or one without the other), or a setting :class:`ScanConfig` or
            :class:`LoadOptions` refuses.
    """
    flags = dict(locals())
    data = flags.pop("data")
    options = LoadOptions(
        arch=flags.pop("arch"),
        arch_args=flags.pop("arch_args"),
        num_classes=flags.pop("num_classes"),
        mean=_floats(flags.pop("mean"), "--mean"),
        std=_floats(flags.pop("std"), "--std"),
        input_size=_input_size(flags.pop("input_size")),
    )
    return ScanSettings(data=data, config=ScanConfig(**flags), options=options)


def gate_options(
    max_wci: MaxWciOpt = None,
    max_gap_loss: MaxGapLossOpt = None,
    max_gap_err: MaxGapErrOpt = None,
    min_robust_acc: MinRobustAccOpt = None,
    max_bound: MaxBoundOpt = None,
    baseline: BaselineOpt = None,
    max_wci_increase: MaxWciIncreaseOpt = None,
    fail_on_masking: FailOnMaskingOpt = False,
    gate_sigmas: GateSigmasOpt = None,
    config_file: ConfigOpt = None,
    summary_md: SummaryMdOpt = None,
) -> GateSetup:
    """The gate options, resolved before any work: the config file (given or found) with
    the flags on top, the baseline loaded, the summary's folder checked.

    Raises:
        ConfigError: for a malformed config file, a bad flag, an unreadable baseline or a
            summary folder that does not exist.
    """
    check_output_folders(summary_md)
    flags = dict(locals())
    flags["fail_on_masking"] = fail_on_masking or None  # absent: the config file decides
    return prepare_gates(flags.pop("config_file"), flags.pop("summary_md"), flags)


def with_options(**groups: Callable[..., Any]) -> Callable[[F], F]:
    """Replace each keyword parameter ``name`` of a command by the options of
    ``groups[name]``; the command is called with ``name=groups[name](**their values)``.

    Example:
        >>> @with_options(settings=scan_options)
        ... def scan(checkpoint: str, *, settings: ScanSettings, quiet: bool = False) -> None: ...
        >>> "eps" in inspect.signature(scan).parameters
        True
    """

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        members: dict[str, list[str]] = {}
        params: list[inspect.Parameter] = []
        for param in signature.parameters.values():
            if param.name not in groups:
                params.append(param)
                continue
            own = inspect.signature(groups[param.name], eval_str=True).parameters.values()
            members[param.name] = [p.name for p in own]
            params.extend(p.replace(kind=param.kind) for p in own)

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for name, group in groups.items():
                kwargs[name] = group(**{key: kwargs.pop(key) for key in members[name]})
            return command(*args, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {
            p.name: p.annotation for p in params if p.annotation is not p.empty
        }
        return wrapper  # type: ignore[return-value]

    return decorate


def _input_size(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    parts = text.replace("x", ",").replace(" ", "").split(",")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if not size or min(size) < 1:
        raise ConfigError(
            "--input-size must be positive integers separated by commas: C,H,W like 3,32,32, "
            f"C,L like 1,40 or F like 64, got {text!r}"
        )
    return size


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(
            f"{name} must be comma-separated numbers like 0.5 or 0.485,0.456,0.406, got {text!r}"
        ) from None
    if not values:
        raise ConfigError(f"{name} is empty")
    return values
