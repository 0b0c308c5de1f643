"""``wciaudit track`` at 80 columns: headers and file names whole; help shows no empty default."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import TINY_CNN_SCAN, child_env

ROOT = Path(__file__).resolve().parents[2]


RUN = ROOT / "sample_models" / "run_digits_cnn"


@pytest.mark.slow
def test_track_summary_at_80_columns(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for epoch in (1, 40):
        shutil.copy(
            RUN / f"epoch_{epoch}.safetensors", run / f"checkpoint_epoch_{epoch:03d}.safetensors"
        )
    env = child_env(COLUMNS="80")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "wciaudit",
            "track",
            str(run),
            *TINY_CNN_SCAN,
            "--cache",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "…" not in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 80
    for header in (
        "epoch",
        "checkpoint",
        "WCI ± SE",
        "gap_loss",
        "gap_err",
        "rob.acc T",
        "rob.loss T",
    ):
        assert header in res.stdout
    lines = res.stdout.splitlines()
    header = next(line for line in lines if "checkpoint" in line and "┃" in line)
    col = [h.strip() for h in header.split("┃")].index("checkpoint")
    cells = [line.split("│")[col].strip() for line in lines if line.count("│") > 3]
    # the suffix every file shares is said once; a name breaks only after a separator
    # (here the epoch goes under the name, to leave the name room at 80 columns)
    assert "names without .safetensors" in res.stdout
    names = [c for c in cells if c and not c.startswith("epoch ")]
    assert "".join(names) == "checkpoint_epoch_001checkpoint_epoch_040"
    assert all(p.endswith(("_", ".", "001", "040")) for p in names), names
