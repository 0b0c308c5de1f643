"""A scan stopped by SIGTERM or Ctrl-C keeps the stages that finished: after the attack
stage, the JSON result is written whole, marked incomplete, with the figures of the
unfinished stages null; before it, nothing is written. Tested on real subprocesses that
pause at a chosen stage, so the signal lands there without racing the scan; the scan is the
smallest that runs every stage (the sample CNN on 40 + 40 digits), since what is tested is
which stages finished, not their figures."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runner import TINY_CNN_SCAN, child_env, invoke_in

ROOT = Path(__file__).resolve().parents[2]
CNN = ROOT / "sample_models" / "digits_cnn.safetensors"

# The child replaces one stage function of wciaudit.pipeline with a pause that says so
# through a marker file and waits there for the signal.
CHILD = r"""
import importlib, sys, time
from pathlib import Path
marker = Path(sys.argv[1])
where = sys.argv[2]

def pause(*args, **kwargs):
    marker.write_text("ready")
    time.sleep(120)

setattr(importlib.import_module("wciaudit.pipeline"), where, pause)
from wciaudit.cli.app import main
sys.argv = ["wciaudit", *sys.argv[3:]]
main()
"""

#: the curvature stage (after attack and evaluate) and the attack stage
IN_CURVATURE, IN_ATTACK = "measure_curvature", "attack_stage"


def scan_args(out_dir: Path) -> list[str]:
    """``wciaudit scan`` of the sample CNN writing ``r.json`` and ``r.html`` in ``out_dir``."""
    return [
        "scan",
        str(CNN),
        *TINY_CNN_SCAN,
        "-q",
        "--json",
        str(out_dir / "r.json"),
        "--html",
        str(out_dir / "r.html"),
    ]


def run_child(out_dir: Path, where: str, signum: int) -> subprocess.CompletedProcess:
    """``wciaudit scan`` paused at ``where`` and sent ``signum`` there."""
    out_dir.mkdir()
    marker = out_dir.parent / f"{out_dir.name}.ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marker), where, *scan_args(out_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=out_dir,
        env=child_env(),
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the child never reached the pause"
            time.sleep(0.05)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """A scan terminated (SIGTERM) during its curvature stage."""
    out_dir = tmp_path_factory.mktemp("stopped") / "out"
    return run_child(out_dir, IN_CURVATURE, signal.SIGTERM), out_dir


def test_sigterm_after_the_attack_writes_an_incomplete_json(stopped) -> None:
    proc, out_dir = stopped
    assert proc.returncode == 143, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("wciaudit: error: terminated (SIGTERM); wrote the incomplete result")
    assert "stopped during the curvature stage" in lines[0]
    assert "no HTML report" in lines[0]
    # the JSON alone: no HTML for an incomplete result, no temporary file left
    assert sorted(p.name for p in out_dir.iterdir()) == ["r.json"]
    d = json.loads((out_dir / "r.json").read_text())
    assert d["schema_version"] == 1
    assert d["complete"] is False
    assert d["stopped_at"] == "curvature"
    assert d["stages"] == ["load", "data", "attack", "evaluate"]
    # what finished is there; what did not is null, never made up
    assert d["metrics"]["robust_acc_test"] is not None and d["metrics"]["gap_loss"] is not None
    assert d["attacks"]["accuracy_from"] == "pgd"
    assert d["wci"] is None and d["wci_se"] is None and d["pac_bayes"]["bound"] is None
    assert d["metrics"]["hessian_loss"] is None and d["dataset"]["hessian_samples"] is None
    assert d["layers"] and all(la["trace"] is None for la in d["layers"])
    assert all(la["frob_norm"] > 0 for la in d["layers"])  # measured at load
    assert d["timings"]["trace_s"] is None and d["timings"]["attack_s"] > 0
    assert d["gate"]["passed"] is False and "incomplete" in d["gate"]["failures"][0]


@pytest.mark.slow
def test_the_kept_figures_are_those_of_the_whole_scan(stopped, tmp_path: Path) -> None:
    """Same settings run through: the stages that finished gave the same numbers. The
    whole scan runs in this process: its figures, not its process, are compared."""
    _, out_dir = stopped
    (tmp_path / "whole").mkdir()
    code, _, stderr = invoke_in(tmp_path, scan_args(tmp_path / "whole"))
    assert code == 0, stderr
    full = json.loads((tmp_path / "whole" / "r.json").read_text())
    part = json.loads((out_dir / "r.json").read_text())
    assert full["complete"] is True and full["stopped_at"] is None
    assert full["stages"] == ["load", "data", "attack", "evaluate", "curvature", "bound"]
    assert full["wci"] is not None
    assert full["attacks"] == part["attacks"]
    assert full["dataset"] | {"hessian_samples": None} == part["dataset"]
    assert {k: v for k, v in full["metrics"].items() if k != "hessian_loss"} == {
        k: v for k, v in part["metrics"].items() if k != "hessian_loss"
    }
    assert [la["frob_norm"] for la in full["layers"]] == [la["frob_norm"] for la in part["layers"]]


def test_gate_on_an_incomplete_result_fails_with_one_line(stopped, tmp_path: Path) -> None:
    _, out_dir = stopped
    code, stdout, stderr = invoke_in(
        tmp_path, ["gate", str(out_dir / "r.json"), "--min-robust-acc", "0"]
    )
    assert code == 1
    assert stdout == ""
    assert stderr.strip().splitlines() == [
        "wciaudit: gate failed: incomplete result: the scan was stopped during its curvature "
        "stage (finished: load, data, attack, evaluate); the figures of that stage and later "
        "ones are null; gates need a whole scan"
    ]


def test_report_on_an_incomplete_result_says_so(stopped, tmp_path: Path) -> None:
    _, out_dir = stopped
    page = tmp_path / "r.html"
    code, _, stderr = invoke_in(tmp_path, ["report", str(out_dir / "r.json"), "-o", str(page)])
    assert code == 0, stderr
    assert stderr.startswith(f"wciaudit: warning: {out_dir / 'r.json'}: incomplete result")
    html = page.read_text()
    assert "Incomplete result." in html and "<strong>curvature</strong> stage" in html


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_before_the_attack_finished_writes_nothing(tmp_path: Path, signum: int) -> None:
    proc = run_child(tmp_path / "out", IN_ATTACK, signum)
    assert proc.returncode == 128 + signum, proc.stderr
    word = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    assert proc.stderr.strip() == f"wciaudit: error: {word}; no output was written"
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_after_the_attack_keeps_the_finished_stages(tmp_path: Path) -> None:
    proc = run_child(tmp_path / "out", IN_CURVATURE, signal.SIGINT)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.startswith("wciaudit: error: interrupted; wrote the incomplete result")
    d = json.loads((tmp_path / "out" / "r.json").read_text())
    assert d["complete"] is False and d["stopped_at"] == "curvature"
