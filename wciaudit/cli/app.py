"""The typer app: wiring only. One module per command."""

from __future__ import annotations

import typer

from .._version import __version__
from . import gate as gate_cmd
from . import report as report_cmd
from . import scan as scan_cmd
from . import track as track_cmd
from .help import HelpCommand, HelpGroup

app = typer.Typer(
    name="wciaudit",
    cls=HelpGroup,
    help=(
        "Audit image classifiers for adversarially robust generalization: PGD robust gap, "
        "per-layer Hessian traces of the adversarial loss, the Weight-Curvature Index "
        "(Xu & Zhang, arXiv 2410.07719) and PAC-Bayes bound terms."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
# without its argument a command says which one is missing (exit 2), as any usage error
app.command("scan", cls=HelpCommand)(scan_cmd.scan)
app.command("gate", cls=HelpCommand)(gate_cmd.gate)
app.command("report", cls=HelpCommand)(report_cmd.report)
app.command("track", cls=HelpCommand)(track_cmd.track)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wciaudit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """wciaudit: Weight-Curvature Index audits."""


def main() -> None:
    """Console entry point: usage errors also end in one line and exit code 2; Ctrl-C
    and SIGTERM, wherever they arrive, in one line and 130 or 143."""
    from .common import EXIT_INTERRUPTED, EXIT_TERMINATED, StopSignals, Terminated, fail

    StopSignals().install()
    try:
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        fail("interrupted; no output was written", EXIT_INTERRUPTED)
        code = EXIT_INTERRUPTED
    except Terminated:
        fail("terminated (SIGTERM); no output was written", EXIT_TERMINATED)
        code = EXIT_TERMINATED
    except typer.exceptions.TyperException as exc:  # click's usage errors
        code = getattr(exc, "exit_code", 2)
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # the help text, as without arguments
        else:
            fail(exc.format_message() if hasattr(exc, "format_message") else str(exc), code)
    raise SystemExit(code or 0)
