"""benchmarks/gpu_smoke.py on the CPU: its checks pass, skip what needs CUDA, and a
failing check prints FAIL and makes the exit status 1."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_smoke"] = module
    spec.loader.exec_module(module)
    return module


smoke = _load()
CPU = torch.device("cpu")
FAST = [
    "exact-ggn vs dense",
    "mc-ggn vs dense",
    "hutchinson vs dense",
    "hutch++ float32 vs dense",
    "one graph at a time",
]


@pytest.mark.parametrize("name", FAST)
def test_the_estimator_checks_pass_on_the_cpu(name: str) -> None:
    outcome = smoke.CHECKS[name](CPU)
    assert outcome.ok, outcome.detail


@pytest.mark.parametrize("name", ["peak memory 1 vs 4 batches", "oom retry under a cap"])
def test_the_cuda_only_checks_skip_on_the_cpu(name: str) -> None:
    with pytest.raises(smoke.Skipped):
        smoke.CHECKS[name](CPU)


def test_the_one_graph_check_sees_a_kept_graph() -> None:
    # the check's instrument, against a loop that keeps every batch's graph
    model = torch.nn.Linear(3, 2)
    kept = []

    def leaky() -> None:
        for _ in range(3):
            kept.append(model(torch.randn(4, 3)).tanh())

    assert smoke.stale_graphs(model, leaky)[-1] > 0


def test_lines_end_in_ok_or_fail_and_a_failure_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        smoke.main(["--device", "cpu", "--only", "exact-ggn vs dense,oom retry under a cap"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    checks = [line for line in lines if not line.startswith("#")]
    assert len(checks) == 2 and all(line.endswith(" ok") for line in checks)
    assert "skipped on cpu" in checks[1]

    def broken(_device: torch.device) -> smoke.Outcome:
        raise RuntimeError("the device fell over")

    monkeypatch.setitem(smoke.CHECKS, "exact-ggn vs dense", broken)
    assert smoke.main(["--only", "exact-ggn vs dense"]) == 1
    out = capsys.readouterr().out
    assert "exact-ggn vs dense: raised RuntimeError: the device fell over FAIL" in out


def test_the_scans_agree_on_the_cpu() -> None:
    results = dict(smoke.check_scans(CPU))
    assert all(o.ok for o in results.values()), {k: o.detail for k, o in results.items()}
    assert results["scan twice on device"].detail == "identical"


@pytest.mark.slow
def test_the_whole_cpu_run_passes(capsys: pytest.CaptureFixture[str]) -> None:
    # what CI runs: every check on the CPU, the resnet18 timing line included
    assert smoke.main(["--device", "cpu"]) == 0
    checks = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(checks) == len(smoke.CHECKS) + 2
    assert all(line.endswith(" ok") for line in checks)
