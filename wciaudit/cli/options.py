"""Every command-line option that more than one command takes, declared once.

The scan options (``scan``, ``track``) are made from the fields of :class:`ScanConfig` and
:class:`LoadOptions`: one option per field, with the field's default and help text
(:mod:`wciaudit.setting`), plus ``--data``. The gate options (``scan``, ``gate``) are
declared in :func:`gate_options`. A group is a function whose parameters are its options
and which turns their values into one object; :func:`with_options` puts a group's options
into a command's signature in place of one keyword parameter and hands the command that
object, so a command lists neither the options nor their defaults again. The few options
that several commands share one by one are ``Annotated`` aliases; an option of one
command is declared in that command.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import Field, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

from ..config import LoadOptions, ScanConfig
from ..setting import Cli, cli_of, help_of
from .common import check_output_folders
from .gating import GateSetup, prepare_gates

F = TypeVar("F", bound=Callable[..., Any])

GATE_PANEL = "Gates (exit 1 when one fails)"

# -- options several commands take one by one ------------------------------------------------
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="No summary and no progress bars; errors still go to stderr."
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


# -- the scan options (scan, track), made from the settings' fields ---------------------------
@dataclass(frozen=True)
class ScanSettings:
    """The scan options, parsed: the data spec, the checkpoint-loading options, the config
    (its eps / norm None where the flag was not given: the checkpoint's metadata decides)."""

    data: str | None
    config: ScanConfig
    options: LoadOptions


DATA_HELP = (
    "sample | file.npz | DIR (ImageFolder: DIR/train, DIR/test or val) | cifar10:DIR | "
    "cifar100:DIR. Default: the dataset the checkpoint names, else the shipped sample if the "
    "model takes its shape."
)


def _spelling(cls: type, name: str) -> tuple[Field[Any], Cli, Any]:
    """The field ``name`` of ``cls``, its command-line spelling and its type."""
    f = next(f for f in fields(cls) if f.name == name)
    cli = cli_of(f)
    if cli is None:
        raise ValueError(f"{cls.__name__}.{name} has no command-line option")
    return f, cli, _hints(cls)[name]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def field_option(cls: type, name: str) -> inspect.Parameter:
    """The command-line option of the field ``name`` of ``cls`` (a settings dataclass):
    its names, default, help text and ``show_default`` from the field's :func:`setting`;
    its type the field's, or text where the field takes text (``--eps 8/255``).

    Raises:
        ValueError: the field has no command-line option (``cli=None``).
    """
    f, cli, hint = _spelling(cls, name)
    if cli.text or cli.parse is not None:
        hint = str | None if f.default is None else str
    option = typer.Option(
        *cli.names(name, hint is bool), help=help_of(f), show_default=cli.show_default
    )
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=Annotated[hint, option]
    )


def flag_of(cls: type, name: str) -> str:
    """The option's long name (``--input-size``), as the option's error messages give it."""
    _, cli, hint = _spelling(cls, name)
    return cli.names(name, hint is bool)[0].split("/")[0]


def shared_fields(cls: type) -> list[str]:
    """The fields of ``cls`` that are options of every scanning command, in field order."""
    return [f.name for f in fields(cls) if (cli := cli_of(f)) is not None and cli.shared]


def scan_options(**values: Any) -> ScanSettings:
    """The options of every command that runs scans, as :class:`ScanSettings`: ``--data``,
    then one option per field of :class:`LoadOptions` and :class:`ScanConfig`, in field
    order (:data:`SCAN_OPTIONS`).

    Raises:
        ConfigError: for invalid JSON in ``--arch-args``, a bad ``--mean``/``--std``
            list (or one without the other), or a setting :class:`ScanConfig` or
            :class:`LoadOptions` refuses.
    """
    data = values.pop("data")
    load: dict[str, Any] = {}
    for name in shared_fields(LoadOptions):
        value = values.pop(name)
        parse = _spelling(LoadOptions, name)[1].parse
        if value is not None and parse is not None:
            value = parse(value, flag_of(LoadOptions, name))
        load[name] = value
    return ScanSettings(data=data, config=ScanConfig(**values), options=LoadOptions(**load))


#: the scan options' parameters: ``--data``, then the fields' options
SCAN_OPTIONS = inspect.Signature(
    [
        inspect.Parameter(
            "data",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[str | None, typer.Option("--data", "-d", help=DATA_HELP)],
        ),
        *(field_option(LoadOptions, name) for name in shared_fields(LoadOptions)),
        *(field_option(ScanConfig, name) for name in shared_fields(ScanConfig)),
    ],
    return_annotation=ScanSettings,
)
scan_options.__signature__ = SCAN_OPTIONS  # type: ignore[attr-defined]


def field_group(cls: type, name: str) -> Callable[..., Any]:
    """A group of one option, the field ``name`` of ``cls`` (for :func:`with_options`):
    a field that one command alone takes (``scan --weights-only``)."""

    def group(**values: Any) -> Any:
        return values[name]

    group.__signature__ = inspect.Signature([field_option(cls, name)])  # type: ignore[attr-defined]
    return group


# -- the gate options (scan, gate) ----------------------------------------------------------
def _gate(name: str, kind: Any, flag: str, text: str, **extra: Any) -> inspect.Parameter:
    """A gate option: in the gates' panel, None by default (absent: the config file decides)."""
    extra.setdefault("show_default", False)
    option = typer.Option(flag, help=text, rich_help_panel=GATE_PANEL, **extra)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind, option]
    )


#: the gate options' parameters (``wciaudit.gate_config`` reads the same names from a file)
GATE_OPTIONS = inspect.Signature(
    [
        _gate("max_wci", float | None, "--max-wci",
              "Fail when WCI exceeds this by more than --gate-sigmas SE."),
        _gate("max_gap_loss", float | None, "--max-gap-loss",
              "Fail when the robust loss gap L_adv(T) - L_adv(S) exceeds this."),
        _gate("max_gap_err", float | None, "--max-gap-err",
              "Fail when the robust error gap robust_acc(S) - robust_acc(T) exceeds this."),
        _gate("min_robust_acc", float | None, "--min-robust-acc",
              "Fail when the robust accuracy on the test split is below this fraction (0-1)."),
        _gate("max_bound", float | None, "--max-bound",
              "Fail when the PAC-Bayes bound exceeds this (no SE: any excess fails)."),
        _gate("baseline", Path | None, "--baseline",
              "A baseline JSON result for --max-wci-increase.", dir_okay=False),
        _gate("max_wci_increase", str | None, "--max-wci-increase",
              "Fail when WCI exceeds the baseline's by more than this: '10%' (relative) or 0.5 "
              "(absolute). Needs --baseline."),
        _gate("fail_on_masking", bool, "--fail-on-masking",
              "Fail when a gradient-masking check (random output among them) failed.",
              show_default=True).replace(default=False),
        _gate("gate_sigmas", float | None, "--gate-sigmas",
              "A gate fails only when the figure is beyond its threshold by more than this many "
              "standard errors (default 2)."),
        _gate("config_file", Path | None, "--config",
              "Read thresholds from this wciaudit.toml or pyproject.toml (default: the first one "
              "found from the current folder upward).", dir_okay=False),
        _gate("summary_md", Path | None, "--summary-md",
              'Write a Markdown summary (figures and gates) here, e.g. "$GITHUB_STEP_SUMMARY".',
              dir_okay=False),
    ],
    return_annotation=GateSetup,
)  # fmt: skip


def gate_options(**flags: Any) -> GateSetup:
    """The gate options (:data:`GATE_OPTIONS`), resolved before any work: the config file
    (given or found) with the flags on top, the baseline loaded, the summary's folder
    checked.

    Raises:
        ConfigError: for a malformed config file, a bad flag, an unreadable baseline or a
            summary folder that does not exist.
    """
    check_output_folders(flags["summary_md"])
    flags["fail_on_masking"] = flags["fail_on_masking"] or None  # absent: the file decides
    return prepare_gates(flags.pop("config_file"), flags.pop("summary_md"), flags)


gate_options.__signature__ = GATE_OPTIONS  # type: ignore[attr-defined]


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
