"""docs/ci.md's example of the JSON ``gate`` block is what the gate writes for its
figures: the SE is not 0 where the result's SE covers a source, and the failure line,
the excess and the margin follow from the value, the SE and the threshold."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from wciaudit.gate import apply_gates
from wciaudit.gate_config import GateConfig
from wciaudit.result import AuditResult

DOC = Path(__file__).resolve().parent.parent / "docs" / "ci.md"


def _gate_example() -> dict:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    gate = [b for b in blocks if b.lstrip().startswith('"gate"')]
    assert len(gate) == 1
    return json.loads("{" + gate[0] + "}")["gate"]


def test_the_gate_example_is_what_the_gate_writes():
    example = _gate_example()
    (check,) = example["checks"]
    assert check["figure"] == "wci" and check["se"] > 0  # an exact route still has an SE
    result = AuditResult(wci=check["value"], wci_se=check["se"])
    config = GateConfig(max_wci=check["threshold"], sources={"max_wci": check["source"]})
    gate = apply_gates(result, config)
    (real,) = gate.checks
    assert gate.passed is example["passed"] is False
    assert real["status"] == check["status"]
    # the example rounds the value to 4 significant digits (385.5 for 385.52)
    assert real["excess"] == pytest.approx(check["excess"], abs=0.05)
    assert real["margin_sigmas"] == pytest.approx(check["margin_sigmas"], abs=0.01)
    assert [f.replace(check["source"], "pyproject.toml") for f in gate.failures] == example[
        "failures"
    ]
