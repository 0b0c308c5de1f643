"""wciaudit.cli.options: shared option groups reach a command as one parsed object."""

from __future__ import annotations

import inspect

import pytest
import typer
from typer.testing import CliRunner

from wciaudit.cli.common import handle_errors
from wciaudit.cli.options import ScanSettings, scan_options, with_options
from wciaudit.config import LoadOptions, ScanConfig


def _app() -> tuple[typer.Typer, list[ScanSettings]]:
    seen: list[ScanSettings] = []

    @handle_errors
    @with_options(settings=scan_options)
    def command(name: str, *, settings: ScanSettings, quiet: bool = False) -> None:
        seen.append(settings)

    app = typer.Typer()
    app.command()(command)
    app.command("other")(lambda: None)  # two commands, so the first is addressed by name
    return app, seen


def test_group_options_replace_the_placeholder_in_place():
    app, _ = _app()
    params = list(inspect.signature(app.registered_commands[0].callback).parameters)
    groups = list(inspect.signature(scan_options).parameters)
    assert params == ["name", *groups, "quiet"]


def test_the_command_receives_the_parsed_settings():
    app, seen = _app()
    flags = ["--eps", "2/255", "--steps", "3", "--mean", "0.5, 0.25", "--std", "0.2,0.1"]
    res = CliRunner().invoke(app, ["command", "x", *flags, "--input-size", "2,8,8"])
    assert res.exit_code == 0, res.output
    (settings,) = seen
    assert settings.config.eps == pytest.approx(2 / 255) and settings.config.steps == 3
    assert settings.data is None
    assert settings.config.hessian_samples == ScanConfig().hessian_samples
    assert settings.options == LoadOptions(mean=(0.5, 0.25), std=(0.2, 0.1), input_size=(2, 8, 8))


def test_a_bad_option_value_is_one_line_and_exit_2():
    app, seen = _app()
    res = CliRunner().invoke(app, ["command", "x", "--arch-args", "{nope"])
    assert res.exit_code == 2 and "--arch-args is not valid JSON" in res.output and not seen
    res = CliRunner().invoke(app, ["command", "x", "--mean", "0.5"])
    assert res.exit_code == 2 and "give both mean and std" in res.output and not seen
