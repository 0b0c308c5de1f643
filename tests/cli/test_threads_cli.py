"""The thread policy on the command line: --threads on scan and track, 0 refused as a
usage error, --verbose says the choice and the time shares, the JSON records both."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import ROOT, TINY_CNN_SCAN, child_env, console_in, invoke_in

CNN = ROOT / "sample_models" / "digits_cnn.safetensors"
RUN = ROOT / "sample_models" / "run_digits_cnn"


def test_threads_zero_is_a_usage_error(tmp_path: Path) -> None:
    for command in ("scan", "track"):
        code, out, err = console_in(tmp_path, [command, str(CNN), "--threads", "0"])
        assert code == 2, (out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "threads must be an integer in [1, 4096], got 0" in lines[0]
        assert "internal error" not in err and not list(tmp_path.iterdir())


def test_verbose_scan_says_the_threads_and_the_time_shares(tmp_path: Path) -> None:
    args = ["scan", str(CNN), *TINY_CNN_SCAN, "--masking-samples", "8", "--threads", "1", "-v"]
    code, out, err = invoke_in(tmp_path, args)
    assert code == 0, err
    text = " ".join(out.split())
    assert "threads: 1 (--threads 1)" in text
    assert "time shares of" in text and "masking" in text and "spread re-measure" in text
    result = json.loads((tmp_path / "digits_cnn.wciaudit.json").read_text())
    assert result["config"]["threads"] == 1
    assert result["config"]["thread_policy"]["reason"] == "--threads 1"
    timings = result["timings"]
    parts = ("attack", "masking", "traces", "attack_spread", "spread_remeasure")
    assert set(timings["parts_s"]) == set(parts)
    assert set(timings["shares"]) == {*parts, "other"}
    assert sum(timings["shares"].values()) == pytest.approx(1.0)
    for name in parts:
        seconds = timings["shares"][name] * timings["total_s"]
        assert seconds == pytest.approx(timings["parts_s"][name])
    assert sum(timings["parts_s"].values()) <= timings["total_s"]


def test_default_policy_is_recorded(tmp_path: Path) -> None:
    code, out, err = invoke_in(tmp_path, ["scan", str(CNN), *TINY_CNN_SCAN, "-q"])
    assert code == 0, err
    policy = json.loads((tmp_path / "digits_cnn.wciaudit.json").read_text())["config"]
    assert policy["thread_policy"]["threads"] == policy["threads"] >= 1
    assert policy["thread_policy"]["reason"]


def test_track_takes_threads(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for epoch in (1, 10):
        shutil.copy(RUN / f"epoch_{epoch}.safetensors", run / f"epoch_{epoch}.safetensors")
    args = [
        "track",
        str(run),
        *TINY_CNN_SCAN,
        "--threads",
        "1",
        "-v",
        "--cache",
        str(tmp_path / "c"),
    ]
    code, out, err = invoke_in(tmp_path, args)
    assert code == 0, err
    assert "threads: 1 (--threads 1)" in " ".join(out.split())
    series = json.loads((tmp_path / "run.track.json").read_text())
    assert len(series["checkpoints"]) == 2


@pytest.mark.slow
def test_wait_policy_is_reported_as_set_in_a_real_process(tmp_path: Path) -> None:
    env = {k: v for k, v in child_env().items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    args = [sys.executable, "-m", "wciaudit", "scan", str(CNN), *TINY_CNN_SCAN, "--threads", "2"]
    done = subprocess.run([*args, "-v"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # the user's wait policy is kept and reported, never replaced
    assert "threads: 2 (--threads 2); OMP_WAIT_POLICY PASSIVE (as set)" in done.stdout
