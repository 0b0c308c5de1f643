"""Tests of the gate options on the command line: ``wciaudit gate`` through typer's
CliRunner, and ``scan``/``gate`` as real subprocesses on the sample model, including the
GitHub Actions workflow of docs/ci.md."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import console_in
from typer.testing import CliRunner

from wciaudit.cli.app import app
from wciaudit.result import AttackInfo, AuditResult, DatasetInfo, Metrics, PacBayes

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
DOCS = ROOT / "docs" / "ci.md"
SCAN_ARGS = [
    "scan",
    "sample_models/digits_cnn.safetensors",
    "--arch",
    "sample_models/digits_cnn.py",
    "--data",
    "sample",
    "--train-samples",
    "200",
    "--test-samples",
    "200",
    "--hessian-samples",
    "100",
    "--steps",
    "3",
    "--eps",
    "0.1",
    "--masking-samples",
    "0",
    "--quiet",
]

runner = CliRunner()


def _result(**over) -> AuditResult:
    base = dict(
        wci=12.3,
        wci_se=0.4,
        pac_bayes=PacBayes(bound=7.14),
        metrics=Metrics(
            gap_loss=0.9,
            gap_loss_se=0.1,
            gap_err=0.2,
            gap_err_se=0.02,
            robust_acc_test=0.3,
            robust_acc_test_se=0.02,
        ),
        dataset=DatasetInfo(name="digits", n_train=200, n_test=200),
    )
    base.update(over)
    return AuditResult(**base)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A clean current folder holding result.json (WCI 12.3 ± 0.4)."""
    monkeypatch.chdir(tmp_path)
    _result().save(tmp_path / "result.json")
    return tmp_path


def _gate(*args: str):
    return runner.invoke(app, ["gate", *args])


# -- wciaudit gate, in process ---------------------------------------------------------------


def test_gate_passes(work):
    res = _gate("result.json", "--max-wci", "20", "--min-robust-acc", "0.2")
    assert res.exit_code == 0, res.output
    assert "Gates" in res.stdout and res.stderr == ""


def test_gate_fails_with_one_line_per_gate(work):
    res = _gate("result.json", "--max-wci", "10", "--max-bound", "5", "--max-gap-err", "1")
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [
        "wciaudit: gate failed: wci = 12.3 ± 0.4 exceeds --max-wci 10 by 5.8 SE (limit 2 SE)",
        "wciaudit: gate failed: bound = 7.14 exceeds --max-bound 5 by 2.14 (no SE, taken as 0: any excess fails)",
    ]


def test_gate_within_noise_passes_and_says_so(work):
    res = _gate("result.json", "--max-wci", "11.8")
    assert res.exit_code == 0 and "within noise" in res.stdout
    res = _gate("result.json", "--max-wci", "11.8", "--gate-sigmas", "1")
    assert res.exit_code == 1 and "by 1.2 SE (limit 1 SE)" in res.stderr


def test_gate_writes_json_and_markdown(work):
    res = _gate(
        "result.json",
        "--max-wci",
        "10",
        "--max-gap-loss",
        "1.0",
        "--json",
        "gated.json",
        "--summary-md",
        "summary.md",
    )
    assert res.exit_code == 1
    gate = json.loads((work / "gated.json").read_text())["gate"]
    assert gate["passed"] is False and len(gate["failures"]) == 1
    by_figure = {c["figure"]: c for c in gate["checks"]}
    assert by_figure["wci"]["status"] == "fail" and by_figure["gap_loss"]["status"] == "pass"
    assert by_figure["wci"]["source"] == "cli" and by_figure["wci"]["sigmas_source"] == "default"
    assert by_figure["wci"]["threshold"] == 10.0 and by_figure["wci"]["se"] == 0.4
    md = (work / "summary.md").read_text()
    assert md.startswith("### wciaudit: ❌ 1 gate failed")
    assert (
        "| WCI | 12.3 ± 0.4 |" in md
        and "| wci <= 10 | 12.3 ± 0.4 | +5.8 SE | ❌ fail | cli |" in md
    )
    assert "more than 2 standard errors" in md
    # the input is never modified
    assert AuditResult.load(work / "result.json").gate.checks == []


def test_gate_config_discovery_and_precedence(work):
    (work / "pyproject.toml").write_text("[tool.wciaudit]\nmax_wci = 10\nmax_gap_err = 0.1\n")
    sub = work / "sub"
    sub.mkdir()
    os.chdir(sub)
    res = _gate("../result.json", "--json", "out.json")
    assert res.exit_code == 1
    assert "exceeds --max-gap-err 0.1 (from pyproject.toml)" in res.stderr
    # a flag overrides its key only
    res = _gate("../result.json", "--max-wci", "20", "--json", "out.json")
    assert res.exit_code == 1 and "--max-wci" not in res.stderr
    checks = {c["figure"]: c for c in json.loads(Path("out.json").read_text())["gate"]["checks"]}
    assert checks["wci"]["source"] == "cli" and checks["wci"]["threshold"] == 20.0
    assert checks["gap_err"]["source"] == str((work / "pyproject.toml").resolve())
    res = _gate("../result.json", "--max-wci", "20", "--max-gap-err", "0.5")
    assert res.exit_code == 0, res.stderr


def test_gate_explicit_config(work):
    (work / "gates.toml").write_text("min_robust_acc = 0.5\n")
    res = _gate("result.json", "--config", "gates.toml")
    assert res.exit_code == 1 and "is below --min-robust-acc 0.5 (from gates.toml)" in res.stderr


def test_gate_malformed_config_exits_2_naming_file_and_key(work):
    (work / "wciaudit.toml").write_text("max_wci = 'ten'\n")
    res = _gate("result.json", "--max-bound", "10", "--json", "out.json", "--summary-md", "s.md")
    assert res.exit_code == 2
    line = res.stderr.strip()
    assert line.startswith("wciaudit: error: ") and "\n" not in line
    assert "wciaudit.toml" in line and "'max_wci'" in line
    assert not (work / "out.json").exists() and not (work / "s.md").exists()


def test_gate_baseline(work):
    _result(wci=10.0, wci_se=0.1).save(work / "old.json")
    res = _gate("result.json", "--baseline", "old.json", "--max-wci-increase", "10%")
    assert res.exit_code == 1
    assert "exceeds --max-wci-increase 10% over baseline 10 ± 0.1 (limit 11)" in res.stderr
    res = _gate("result.json", "--baseline", "old.json", "--max-wci-increase", "30%")
    assert res.exit_code == 0
    res = _gate("result.json", "--baseline", "old.json", "--max-wci-increase", "2.5")
    assert res.exit_code == 0


def test_gate_baseline_from_config_is_relative_to_the_file(work):
    (work / "audit").mkdir()
    _result(wci=10.0, wci_se=0.1).save(work / "audit" / "base.json")
    (work / "wciaudit.toml").write_text("baseline = 'audit/base.json'\nmax_wci_increase = '10%'\n")
    (work / "sub").mkdir()
    os.chdir(work / "sub")
    res = _gate("../result.json")
    assert res.exit_code == 1 and "over baseline 10" in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-wci-increase", "10%"], "needs a baseline result"),
        (
            ["--baseline", "missing.json", "--max-wci-increase", "10%"],
            "baseline (from cli): result file not found",
        ),
        (
            ["--max-wci-increase", "lots", "--baseline", "result.json"],
            "--max-wci-increase must be a percentage",
        ),
        (["--min-robust-acc", "45"], "--min-robust-acc is a fraction"),
        (["--gate-sigmas", "-1", "--max-wci", "1"], "--gate-sigmas must be >= 0"),
        ([], "no gate set"),
        (["--max-wci", "1", "--summary-md", "nowhere/s.md"], "output folder does not exist"),
    ],
)
def test_gate_usage_errors_exit_2(work, args, message):
    res = _gate("result.json", *args)
    assert res.exit_code == 2
    assert message in res.stderr and res.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a JSON file"),
        ('{"schema_version": 99}', "unsupported result schema_version 99"),
    ],
)
def test_gate_bad_result_exits_2(work, content, message):
    (work / "bad.json").write_text(content)
    res = _gate("bad.json", "--max-wci", "1")
    assert res.exit_code == 2 and message in res.stderr
    assert _gate("absent.json", "--max-wci", "1").exit_code == 2


def test_gate_null_figure_fails(work):
    _result(metrics=Metrics(), dataset=DatasetInfo(name="digits", n_train=200)).save(
        work / "train_only.json"
    )
    res = _gate("train_only.json", "--max-gap-loss", "1")
    assert res.exit_code == 1
    assert "gap_loss is null (no test split): cannot check --max-gap-loss" in res.stderr


def test_scan_bad_gate_config_exits_2_before_any_work(work):
    (work / "pyproject.toml").write_text("[tool.wciaudit]\nmax_wci = [1]\n")
    for name in ("digits_cnn.safetensors", "digits_cnn.py"):
        shutil.copy(SAMPLES / name, work / name)
    res = runner.invoke(
        app, ["scan", "digits_cnn.safetensors", "--arch", "digits_cnn.py", "--data", "sample"]
    )
    assert res.exit_code == 2
    assert "pyproject.toml: [tool.wciaudit] key 'max_wci' must be a number" in res.stderr
    assert sorted(p.name for p in work.iterdir()) == [
        "digits_cnn.py",
        "digits_cnn.safetensors",
        "pyproject.toml",
        "result.json",
    ]


def test_help_lists_the_gate_options():
    for command in ("scan", "gate"):
        res = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0
        for option in (
            "--max-wci",
            "--max-gap-loss",
            "--max-gap-err",
            "--min-robust-acc",
            "--max-bound",
            "--baseline",
            "--max-wci-increase",
            "--gate-sigmas",
            "--summary-md",
            "--config",
            "--fail-on-masking",
        ):
            assert option in res.output, (command, option)


def _masking(*passed) -> AttackInfo:
    names = ("deterministic-output", "more-steps", "square-vs-whitebox")
    checks = [
        {"name": n, "passed": p, "detail": "", "figures": {}}
        for n, p in zip(names[: len(passed)], passed, strict=True)
    ]
    return AttackInfo(
        masking={"flagged": False in passed, "n": 64, "alpha": 1e-3, "checks": checks}
    )


def test_gate_fails_on_masking_from_a_saved_result(work):
    _result(attacks=_masking(False, True, None)).save(work / "masked.json")
    _result(attacks=_masking(True, True, None)).save(work / "clean.json")
    res = _gate("masked.json", "--fail-on-masking", "--json", "gated.json")
    assert res.exit_code == 1, res.output
    assert res.stderr.splitlines() == [
        "wciaudit: gate failed: gradient masking suspected: deterministic-output failed "
        "(--fail-on-masking)"
    ]
    assert "masking_checks_failed <= 0" in res.stdout
    check = json.loads((work / "gated.json").read_text())["gate"]["checks"][0]
    assert (check["option"], check["value"], check["status"]) == ("--fail-on-masking", 1, "fail")
    # a skipped check (square here) is not a failure
    res = _gate("clean.json", "--fail-on-masking")
    assert res.exit_code == 0 and res.stderr == "", res.output
    # without the flag there is no gate at all
    assert _gate("masked.json").exit_code == 2
    # a result without masking checks cannot be checked: a failure, like a null figure
    res = _gate("result.json", "--fail-on-masking")
    assert res.exit_code == 1 and "no gradient-masking checks (not in the result)" in res.stderr


def test_gate_on_masking_from_a_config_file(work):
    _result(attacks=_masking(True, False)).save(work / "masked.json")
    (work / "wciaudit.toml").write_text("fail-on-masking = true\n")
    res = _gate("masked.json")
    assert res.exit_code == 1 and "more-steps failed" in res.stderr
    (work / "wciaudit.toml").write_text("fail_on_masking = 'yes'\n")
    res = _gate("masked.json")
    assert res.exit_code == 2
    assert "key 'fail_on_masking' must be true or false, got 'yes'" in res.stderr


# -- real subprocesses on the sample model ---------------------------------------------------


def _run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wciaudit", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _sample_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "sample_models").symlink_to(SAMPLES, target_is_directory=True)
    return path


def _docs_block(language: str, containing: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    matches = [b for b in blocks if containing in b]
    assert matches, f"no ```{language} block with {containing!r} in docs/ci.md"
    return matches[0]


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    """Run the workflow of docs/ci.md: every `run:` step but the install, in order, with
    the pyproject.toml of the docs and main's baseline taken to be this very scan."""
    yaml = pytest.importorskip("yaml")
    folder = _sample_folder(tmp_path_factory.mktemp("ci"))
    (folder / "pyproject.toml").write_text(_docs_block("toml", "[tool.wciaudit]"))
    workflow = yaml.safe_load(_docs_block("yaml", "wciaudit scan"))
    steps = workflow["jobs"]["audit"]["steps"]
    summary = folder / "step_summary.md"
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(summary)}
    prelude = f'wciaudit() {{ "{sys.executable}" -m wciaudit "$@"; }}\n'
    runs = []
    for step in steps:
        script = step.get("run")
        if script is None or "pip install" in script:
            continue
        if "audit/baseline.wciaudit.json" in script:
            (folder / "audit").mkdir(exist_ok=True)
            shutil.copy(
                folder / "wciaudit-out" / "result.json", folder / "audit" / "baseline.wciaudit.json"
            )
        proc = subprocess.run(
            ["bash", "-e", "-c", prelude + script],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        runs.append((step.get("name", ""), proc))
    return folder, workflow, runs


@pytest.mark.slow
def test_docs_workflow_runs(workflow_run):
    folder, workflow, runs = workflow_run
    assert [name for name, _ in runs] == [
        "Scan the checkpoint (gates from pyproject.toml)",
        "Compare with the baseline from main",
        "Step summary",
    ]
    for name, proc in runs:
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
    out = folder / "wciaudit-out"
    result = json.loads((out / "result.json").read_text())
    assert result["gate"]["passed"] is True
    assert {c["figure"] for c in result["gate"]["checks"]} == {"wci", "robust_acc_test", "gap_loss"}
    assert all(c["source"].endswith("pyproject.toml") for c in result["gate"]["checks"])
    assert (out / "report.html").stat().st_size > 0
    assert "### wciaudit: ✅ all gates passed" in (folder / "step_summary.md").read_text()
    upload = [
        s for s in workflow["jobs"]["audit"]["steps"] if "upload-artifact" in s.get("uses", "")
    ]
    assert upload and upload[0]["with"]["path"].rstrip("/") == "wciaudit-out"
    assert upload[0]["if"] == "always()"


@pytest.fixture(scope="module")
def sample_scan(tmp_path_factory):
    """One passing scan of the sample model, gated by flags and a wciaudit.toml, through
    the console entry point in this process: (folder, exit code, stderr)."""
    folder = _sample_folder(tmp_path_factory.mktemp("scan"))
    (folder / "wciaudit.toml").write_text("max_wci = 1e6\nmin_robust_acc = 0.05\n")
    code, _, err = console_in(folder, [*SCAN_ARGS, "--json", "ok.json", "--max-gap-loss", "10"])
    return folder, code, err


@pytest.mark.slow
def test_scan_exit_codes_on_the_sample_model(sample_scan):
    """0 / 1 / 2 for pass / fail / bad config, through the console entry point in this
    process: the exit-code mapping is what is tested. Real processes exit 0 on passed
    gates in test_docs_workflow_runs, 1 in test_gate_subprocess_on_a_saved_result."""
    folder, code, err = sample_scan
    assert code == 0, err
    assert err == ""
    gate = json.loads((folder / "ok.json").read_text())["gate"]
    assert gate["passed"] is True and len(gate["checks"]) == 3

    code, _, err = console_in(
        folder, [*SCAN_ARGS, "--json", "r.json", "--max-wci", "1", "--summary-md", "s.md"]
    )
    assert code == 1, err
    lines = [ln for ln in err.splitlines() if ln.startswith("wciaudit: gate failed: ")]
    assert len(lines) == 1 and re.match(
        r"wciaudit: gate failed: wci = [\d.]+ ± [\d.e-]+ exceeds --max-wci 1 by ", lines[0]
    )
    assert json.loads((folder / "r.json").read_text())["gate"]["passed"] is False
    assert "❌ 1 gate failed" in (folder / "s.md").read_text()

    (folder / "wciaudit.toml").write_text("max_gap_loss = 'big'\n")
    code, _, err = console_in(folder, [*SCAN_ARGS, "--json", "bad.json", "--summary-md", "bad.md"])
    assert code == 2
    assert err.strip() == (
        f"wciaudit: error: {(folder / 'wciaudit.toml').resolve()}: key 'max_gap_loss' must be a "
        "number, got 'big' (str)"
    )
    assert not (folder / "bad.json").exists() and not (folder / "bad.md").exists()


@pytest.mark.slow
def test_gate_subprocess_on_a_saved_result(sample_scan, tmp_path):
    saved = sample_scan[0] / "ok.json"
    proc = _run(
        ["gate", str(saved), "--min-robust-acc", "0.99", "--max-wci", "1e6", "-q"], tmp_path
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("wciaudit: gate failed: robust_acc_test = ")
    assert "is below --min-robust-acc 0.99 by" in proc.stderr and proc.stderr.count("\n") == 1
