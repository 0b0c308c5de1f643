"""The scan options and the settings objects agree: every field of ScanConfig (and the
loading fields of LoadOptions) has exactly one option on ``scan`` and on ``track``, with
the field's default and help text, and every option of those commands is a field's or a
command's own, listed below.

Read from the commands as click builds them, not from the code that generates them, so
that an option declared by hand, a field with no option or a default written twice and
changed once fails here."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import click
import pytest
import typer.main

from wciaudit.cli.app import app
from wciaudit.config import LoadOptions, ScanConfig
from wciaudit.setting import help_of

#: ScanConfig fields with no command-line option: settings for the API and the tests
API_ONLY = {"min_probes", "memory_bytes"}
#: LoadOptions fields that are not scan options (scan alone has --weights-only)
LOAD_ONLY = {"scan": set(), "track": {"weights_only"}}
#: options of a command that are no field: the data spec, outputs, gates, the run, ...
COMMAND_ONLY = {
    "scan": {
        "checkpoint", "data", "json_path", "html", "plotly", "csv_path", "distributed",
        "quiet", "verbose", "max_wci", "max_gap_loss", "max_gap_err",
        "min_robust_acc", "max_bound", "baseline", "max_wci_increase", "fail_on_masking",
        "gate_sigmas", "config_file", "summary_md",
    },
    "track": {"run", "data", "cache", "no_cache", "html", "json_path", "quiet", "verbose"},
}  # fmt: skip
ARGUMENT = {"scan": ["model.safetensors"], "track": ["run"]}


def _params(command: str) -> dict[str, list[click.Parameter]]:
    cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    by_name: dict[str, list[click.Parameter]] = {}
    for param in cmd.params:
        by_name.setdefault(param.name, []).append(param)
    return by_name


def _defaults(command: str) -> dict[str, Any]:
    """The values click hands the command when no option is given."""
    cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    with cmd.make_context(command, list(ARGUMENT[command])) as ctx:
        return dict(ctx.params)


def _expected(command: str) -> dict[type, set[str]]:
    return {
        ScanConfig: {f.name for f in fields(ScanConfig)} - API_ONLY,
        LoadOptions: {f.name for f in fields(LoadOptions)} - LOAD_ONLY[command],
    }


@pytest.mark.parametrize("command", sorted(ARGUMENT))
def test_every_field_has_exactly_one_option_with_its_help(command: str) -> None:
    params = _params(command)
    for cls, names in _expected(command).items():
        for f in fields(cls):
            if f.name not in names:
                assert f.name not in params, f"{cls.__name__}.{f.name} is listed as optionless"
                continue
            assert len(params.get(f.name, [])) == 1, f"{cls.__name__}.{f.name}: no single option"
            (param,) = params[f.name]
            assert param.help == help_of(f), f"{f.name}: the option's help is not the field's"
            assert help_of(f).strip(), f"{f.name} has no help text"


@pytest.mark.parametrize("command", sorted(ARGUMENT))
def test_every_option_default_is_the_fields_default(command: str) -> None:
    given = _defaults(command)
    config = ScanConfig(**{name: given[name] for name in _expected(command)[ScanConfig]})
    assert config == ScanConfig()
    for name in _expected(command)[LoadOptions]:
        # the loading options' defaults are None ("from the checkpoint") or a plain flag
        assert given[name] == getattr(LoadOptions(), name), name


@pytest.mark.parametrize("command", sorted(ARGUMENT))
def test_every_option_is_a_field_or_the_commands_own(command: str) -> None:
    known = set().union(*_expected(command).values()) | COMMAND_ONLY[command]
    assert set(_params(command)) <= known, set(_params(command)) - known
    assert COMMAND_ONLY[command] <= set(_params(command)), "a listed option is gone"


def test_optionless_fields_say_so_in_the_docs() -> None:
    doc = " ".join(ScanConfig.__doc__.split())
    names = [f.name for f in fields(ScanConfig)]
    for i, name in enumerate(names):
        entry = doc.split(f" {name}: ", 1)[1]
        if i + 1 < len(names):
            entry = entry.split(f" {names[i + 1]}: ", 1)[0]
        assert entry.endswith("no command-line option)") == (name in API_ONLY), name


def test_scan_and_track_share_the_same_scan_options() -> None:
    scan, track = _params("scan"), _params("track")
    shared = (set(scan) & set(track)) - COMMAND_ONLY["scan"] - COMMAND_ONLY["track"]
    assert shared == _expected("track")[ScanConfig] | _expected("track")[LoadOptions]
    for name in shared:
        assert scan[name][0].opts == track[name][0].opts
        assert scan[name][0].help == track[name][0].help
