"""The typer app: wiring only. One module per command."""

from __future__ import annotations

import typer

from .._version import __version__
from . import scan as scan_cmd

app = typer.Typer(
    name="wciaudit",
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
app.command("scan", no_args_is_help=True)(scan_cmd.scan)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wciaudit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """wciaudit: Weight-Curvature Index audits."""


def main() -> None:
    """Console entry point."""
    app()
