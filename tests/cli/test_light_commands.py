"""The commands that never touch a model (``gate``, ``report``, every ``--help``) run in a
fresh interpreter without importing torch, timm, torchvision or scipy: a CI gate starts in
a fraction of a second."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cli_runner import child_env

from wciaudit.result import AuditResult, DatasetInfo, LayerResult, Metrics

HEAVY = ("torch", "timm", "torchvision", "scipy")

# The child runs each command line through the console entry point, in one interpreter,
# then reports each exit code and which heavy packages were imported on the way.
CHILD = r"""
import json, sys
from wciaudit.cli.app import main

lines, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
codes = []
for line in lines:
    sys.argv = ["wciaudit", *line]
    try:
        main()
    except SystemExit as exc:
        codes.append(exc.code)
heavy = [name for name in heavy if name in sys.modules]
print(json.dumps({"codes": codes, "heavy": heavy}))
"""

COMMANDS = [
    ["--help"],
    *([command, "--help"] for command in ("scan", "gate", "report", "track")),
    [
        "gate",
        "result.json",
        "--max-wci",
        "100",
        "--json",
        "gate.json",
        "--summary-md",
        "gate.md",
        "-q",
    ],
    ["gate", "result.json", "--max-wci", "1", "-q"],
    ["report", "result.json", "-o", "report.html", "--csv", "report.csv", "-q"],
]


def test_gate_report_and_help_run_without_torch(tmp_path: Path) -> None:
    AuditResult(
        wci=12.3,
        wci_se=0.4,
        metrics=Metrics(gap_loss=0.9, robust_acc_test=0.3),
        layers=[LayerResult(name="conv.weight", shape=[4, 1, 3, 3], numel=36, trace=2.0)],
        dataset=DatasetInfo(name="digits", n_train=200, n_test=200),
        config={"eps": 0.1},
    ).save(tmp_path / "result.json")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(COMMANDS), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=child_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    # help exits 0; the gate passes (0) below --max-wci 100 and fails (1) above 1
    assert report["codes"] == [0, 0, 0, 0, 0, 0, 1, 0], proc.stderr
    assert report["heavy"] == []
    for name in ("gate.json", "gate.md", "report.html", "report.csv"):
        assert (tmp_path / name).stat().st_size > 0
