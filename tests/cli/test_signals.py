"""SIGTERM (what CI timeouts send) ends a command like Ctrl-C: one line, exit 143, no
temporary file left and no output half-written; tested on a real subprocess."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from cli_runner import child_env
from typer.testing import CliRunner

from wciaudit.cli.common import StopSignals, handle_errors

ROOT = Path(__file__).resolve().parents[2]


# the sample CNN and its architecture file: loading it needs no timm (an import of ~3 s)
CNN = ROOT / "sample_models" / "digits_cnn.safetensors"
CNN_ARCH = ROOT / "sample_models" / "digits_cnn.py"

# The child pauses at a chosen point, says so through a marker file, and waits there for
# the signal: during the scan itself, or inside the atomic write (temp file present).
CHILD = r"""
import importlib, os, sys, time
from pathlib import Path
marker = Path(sys.argv[1])
where = sys.argv[2]

def pause(*args, **kwargs):
    marker.write_text("ready")
    time.sleep(120)

if where == "write":
    os.fsync = pause
else:
    setattr(importlib.import_module("wciaudit.pipeline"), "scan", pause)
from wciaudit.cli.app import main
sys.argv = ["wciaudit", *sys.argv[3:]]
main()
"""


@pytest.mark.parametrize("where", ["scan", pytest.param("write", marks=pytest.mark.slow)])
def test_sigterm_exits_143_and_leaves_no_files(tmp_path: Path, where: str) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    marker = tmp_path / "ready"
    args = [
        "scan",
        str(CNN),
        "--arch",
        str(CNN_ARCH),
        "--weights-only",
        "-q",
        "--json",
        str(out_dir / "r.json"),
    ]
    env = child_env()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marker), where, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=out_dir,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the child never reached the pause"
            time.sleep(0.05)
        if where == "write":
            assert [p.name for p in out_dir.iterdir() if p.name.endswith(".tmp")], "no temp file"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert stderr.strip() == "wciaudit: error: terminated (SIGTERM); no output was written"
    assert "Traceback" not in stderr and stdout == ""
    assert list(out_dir.iterdir()) == []


def test_a_command_that_asks_for_stop_sees_the_signal_and_the_handlers_come_back() -> None:
    """In process: handle_errors hands ``stop`` to a command that declares it (not as an
    option), records the signal there, ends with 143, and puts the handlers back."""
    seen: list[int | None] = []

    @handle_errors
    def command(name: str, *, stop: StopSignals) -> None:
        try:
            signal.raise_signal(signal.SIGTERM)
        except BaseException:
            seen.append(stop.signum)
            raise

    app = typer.Typer()
    app.command()(command)
    app.command("other")(lambda: None)  # two commands, so the first is addressed by name
    before = signal.getsignal(signal.SIGTERM)
    res = CliRunner().invoke(app, ["command", "x"])
    assert res.exit_code == 143 and "terminated (SIGTERM); no output was written" in res.output
    assert seen == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is before
    assert "--stop" not in CliRunner().invoke(app, ["command", "--help"]).output
