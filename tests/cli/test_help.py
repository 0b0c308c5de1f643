"""Small defects a new user meets: the help text, a bare command, eps in a warning, a bad
result file's name, the config key spellings, one type for ``probes``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import child_env
from typer.testing import CliRunner

from wciaudit.cli.app import app
from wciaudit.result import AuditResult, DatasetInfo, LayerResult

# wide enough that no help line wraps inside a phrase the tests look for
runner = CliRunner(env={"TERMINAL_WIDTH": "250", "COLUMNS": "250"})
ROOT = Path(__file__).resolve().parents[2]


ARGUMENT = {"scan": "CHECKPOINT", "gate": "RESULT", "report": "RESULTS", "track": "RUN"}


def _flat(text: str) -> str:
    """Help text on one line, without the panels' box drawing."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("command", sorted(ARGUMENT))
def test_help_has_no_bool_type_no_empty_default_and_capital_arguments(command: str) -> None:
    res = runner.invoke(app, [command, "--help"])
    assert res.exit_code == 0
    text = _flat(res.stdout)
    assert "<bool>" not in text and "[default: ]" not in text
    assert not re.search(r"\w \.( |$)", text), "a help text lost its bracketed part"
    assert re.search(rf"Usage: .* \[OPTIONS\] \W?{ARGUMENT[command]}\b", text), text[:200]


def test_track_help_shows_its_defaults() -> None:
    text = _flat(runner.invoke(app, ["track", "--help"]).stdout)
    assert "(default: a folder for this run under $WCIAUDIT_CACHE_DIR, else" in text
    assert "~/.cache/wciaudit; the run folder is never written to)" in text
    assert "(default: <run name>.track.html in the current folder)" in text


@pytest.mark.parametrize("command", sorted(ARGUMENT))
def test_bare_command_names_the_missing_argument(command: str) -> None:
    res = runner.invoke(app, [command])
    assert res.exit_code == 2
    assert f"Missing argument '{ARGUMENT[command]}'" in _flat(res.output)


def test_bare_scan_subprocess_is_one_line(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "wciaudit", "scan"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=child_env(),
    )
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == "wciaudit: error: Missing argument 'CHECKPOINT'.\n"


# -- gate: eps, bad files, config spellings ---------------------------------------------------
@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    ds = DatasetInfo(name="digits", n_train=200, n_test=200)
    AuditResult(wci=12.3, wci_se=0.4, dataset=ds, config={"eps": 8 / 255}).save(
        tmp_path / "result.json"
    )
    AuditResult(wci=12.0, wci_se=0.4, dataset=ds, config={"eps": 0.1}).save(tmp_path / "base.json")
    return tmp_path


def test_eps_in_the_baseline_warning_reads_as_typed(work: Path) -> None:
    res = runner.invoke(
        app, ["gate", "result.json", "--baseline", "base.json", "--max-wci-increase", "50%"]
    )
    assert res.exit_code == 0, res.stderr
    assert "eps differs from the baseline (8/255 vs 0.1)" in _flat(res.stderr)
    assert "0.0313" not in res.stderr


def test_a_file_that_is_not_json_is_named(work: Path) -> None:
    (work / "notes.json").write_text("{not json")
    res = runner.invoke(app, ["gate", "notes.json", "--max-wci", "1"])
    assert res.exit_code == 2 and "notes.json: not a JSON file" in res.stderr
    res = runner.invoke(app, ["report", "notes.json", "-o", "r.html"])
    assert res.exit_code == 2 and "notes.json: not a JSON file" in res.stderr


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("wciaudit.toml", "max-wci = 1\n"),
        ("wciaudit.toml", "max_wci = 1\n"),
        ("pyproject.toml", "[tool.wciaudit]\nmax-wci = 1\ngate-sigmas = 1\n"),
    ],
)
def test_config_keys_take_the_flag_spelling_too(work: Path, name: str, text: str) -> None:
    (work / name).write_text(text)
    res = runner.invoke(app, ["gate", "result.json"])
    assert res.exit_code == 1 and "exceeds --max-wci 1" in res.stderr, res.stderr


def test_config_key_given_in_both_spellings_is_refused(work: Path) -> None:
    (work / "wciaudit.toml").write_text("max-wci = 1\nmax_wci = 2\n")
    res = runner.invoke(app, ["gate", "result.json"])
    assert res.exit_code == 2 and "given twice" in res.stderr


def test_probes_is_always_a_count(tmp_path: Path) -> None:
    old = {"name": "a.weight", "probes": "exact", "method": "exact-ggn"}
    layer = LayerResult(**old)  # type: ignore[arg-type]
    assert layer.probes == 0 and layer.exact
    r = AuditResult(layers=[layer, LayerResult(name="b.weight", probes=60)])
    r.layers[1].probes = "exact"  # as an estimator may still hand it over
    r.layers[1].method = "exact-ggn"
    saved = json.loads(r.save(tmp_path / "r.json").read_text())
    assert [la["probes"] for la in saved["layers"]] == [0, 0]
    d = r.to_dict()
    d["layers"][0]["probes"] = "exact"  # a file from an earlier version still reads
    assert AuditResult.from_dict(d).layers[0].probes == 0


# -- --help at 80 columns ------------------------------------------------------------------------
def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("command", [None, *sorted(ARGUMENT)])
def test_every_help_line_is_readable_at_80_columns(command: str | None) -> None:
    import click
    import typer.main
    from rich.cells import cell_len

    narrow = CliRunner(env={"COLUMNS": "80", "TERMINAL_WIDTH": None})
    res = narrow.invoke(app, ["--help"] if command is None else [command, "--help"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert max(cell_len(line) for line in lines) <= 80
    # nothing cut short, no value type on a flag
    assert "…" not in res.stdout and "<bool>" not in res.stdout
    group = typer.main.get_command(app)
    cmd = group if command is None else group.commands[command]
    ctx = click.Context(cmd, info_name=command or "wciaudit")
    text = _words(_flat(res.stdout))
    for param in cmd.get_params(ctx):
        names, help_text = param.get_help_record(ctx)
        # the names and value type on one line, whole; the help text whole, in order
        assert any(line.strip(" │").startswith(names) for line in lines), names
        assert _words(help_text) in text, (names, help_text[:60])
    if command is not None:
        # the help column is the width less the panel's border and a 4-space indent
        widest = max(cell_len(line.strip(" │")) for line in lines if line.startswith("│     "))
        assert widest > 60


def test_wide_terminals_keep_typers_table() -> None:
    res = CliRunner(env={"COLUMNS": "200", "TERMINAL_WIDTH": None}).invoke(app, ["scan", "--help"])
    # option, value type and help side by side on one line
    assert re.search(r"--steps\s+<int>\s+PGD steps K\. \[default: 10\]", res.stdout)
