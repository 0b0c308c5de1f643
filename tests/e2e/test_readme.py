"""The README's first block runs as written (its scan on a shipped sample, offline)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.mark.slow
def test_first_block_installs_and_scans_a_shipped_sample(tmp_path: Path) -> None:
    lines = [line.strip() for line in _blocks()[0].strip().splitlines()]
    assert lines[0].startswith("pip install")  # the install step itself is what CI does
    for line in lines[1:]:
        args = shlex.split(line)
        assert args[0] == "wciaudit"
        args = [str(ROOT / a) if a.startswith("sample_models/") else a for a in args]
        res = subprocess.run(
            [sys.executable, "-m", "wciaudit", *args[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert res.returncode == 0, res.stderr
        assert "WCI =" in res.stdout and "PAC-Bayes" in res.stdout
    result = json.loads((tmp_path / "digits_resnet_pgd.wciaudit.json").read_text())
    assert result["dataset"]["name"] == "digits" and result["wci"] > 0
    html = (tmp_path / "report.html").read_text()
    assert "<html" in html.lower() and "digits_resnet_pgd" in html


def test_second_block_is_the_ci_test_command() -> None:
    second = _blocks()[1].strip()
    assert "pytest" in second
    assert second.split("&&")[-1].strip() in (ROOT / ".ci" / "run").read_text()


def test_the_cpu_torch_choice_stands_beside_the_quick_start() -> None:
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    # the first block stays the two-line set-up and scan; the choice comes right after it
    assert [line.split()[0] for line in _blocks()[0].strip().splitlines()] == ["pip", "wciaudit"]
    assert quick.index("```bash") < quick.index("**Which torch.**")
    choice = quick.split("**Which torch.**", 1)[1]
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in _flat(choice)
    assert "CUDA" in choice


def _flat(text: str) -> str:
    return " ".join(text.split())
