"""Gradient-masking checks: models built to mask gradients are flagged, the sample CNN is not."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console
from torch import nn

from wciaudit import Splits, scan
from wciaudit.attacks.masking import (
    binomial_tail,
    masking_checks,
    sign_test_p,
    stochastic_output_check,
)
from wciaudit.cli.summary import print_summary
from wciaudit.config import ScanConfig
from wciaudit.gate import GateConfig, apply_gates
from wciaudit.report import render_report


class Quantised(nn.Module):
    """round(x * 4) / 4 before the network: the input gradient is zero almost everywhere."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 4) / 4)


class Saturated(nn.Module):
    """Logits times 1e4: the softmax saturates and the cross-entropy gradient underflows to 0."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 1e4


def _by_name(report):
    return {c.name: c for c in report.checks}


def test_the_sample_cnn_is_not_flagged(digits_cnn, digits_test) -> None:
    x, y = digits_test
    report = masking_checks(digits_cnn, x, y, ScanConfig(eps=0.1, steps=10), square=False)
    assert not report.flagged, [c.detail for c in report.checks]
    assert report.n == 64
    checks = _by_name(report)
    assert checks["large-eps"].figures["acc"] <= 0.1
    assert checks["more-steps"].passed and checks["fgsm-vs-pgd"].passed


@pytest.mark.parametrize("wrapper", [Quantised, Saturated])
def test_a_masking_model_is_flagged(digits_cnn, digits_test, wrapper) -> None:
    x, y = digits_test
    masked = wrapper(digits_cnn).eval()
    report = masking_checks(masked, x, y, ScanConfig(eps=0.1, steps=10), square=False)
    assert report.flagged
    large = _by_name(report)["large-eps"]
    assert large.passed is False and large.figures["acc"] > 0.5
    assert report.to_dict()["flagged"] is True


def test_the_tests_by_hand() -> None:
    # 8 discordant pairs all one way: 2^-8
    assert sign_test_p(8, 0) == pytest.approx(2**-8)
    assert sign_test_p(4, 4) == pytest.approx(
        sum(__import__("math").comb(8, i) for i in range(4, 9)) / 256
    )
    assert binomial_tail(0, 10, 0.1) == 1.0 and binomial_tail(11, 10, 0.1) == 0.0
    assert binomial_tail(10, 10, 0.1) == pytest.approx(1e-10)


def test_square_is_skipped_or_run(digits_cnn, digits_test) -> None:
    x, y = digits_test
    report = masking_checks(
        digits_cnn, x[:24], y[:24], ScanConfig(eps=0.1, steps=5), n=24, square_queries=50
    )
    square = _by_name(report)["square-vs-whitebox"]
    try:
        import wciaudit.attacks.square  # noqa: F401
    except ImportError:
        assert square.passed is None and "skipped" in square.detail
    else:
        assert square.passed is True


class AlwaysDropout(nn.Module):
    """Dropout applied whatever the mode: the eval-mode output is random."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.nn.functional.dropout(x, 0.5, training=True))


def test_a_model_with_random_output_fails_the_deterministic_output_check() -> None:
    torch.manual_seed(0)
    x, model = torch.rand(20, 1, 4, 4), AlwaysDropout().eval()
    rng_before = torch.get_rng_state()
    check = stochastic_output_check(model, x)
    # the check draws nothing from the scan's random stream
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert check.name == "deterministic-output" and check.passed is False
    assert check.figures["n"] == 8 and check.figures["max_diff"] > 1e-3
    assert "random draw" in check.detail and "dropout left on" in check.detail


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_deterministic_model_passes_even_with_dropout_layers(dtype) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Dropout(0.5), nn.Linear(12, 3))
    check = stochastic_output_check(net.eval().to(dtype), torch.rand(5, 1, 4, 4))
    assert check.passed is True and check.figures == {"max_diff": 0.0, "changed": 0, "n": 5}
    # in training mode the same model is random, and the check sees it
    assert stochastic_output_check(net.train(), torch.rand(5, 1, 4, 4)).passed is False


def _toy_splits(n: int = 24) -> Splits:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 1, 4, 4, generator=g), torch.arange(n) % 3
    return Splits("toy", x, y, x.clone(), y.clone(), 3, "generated", n, n)


@pytest.mark.parametrize("masking_samples", [0, 16])
def test_a_scan_flags_random_output_and_the_masking_gate_fails_on_it(masking_samples) -> None:
    torch.manual_seed(0)
    cfg = dict(eps=0.1, steps=2, hessian_samples=8, max_probes=4, masking_samples=masking_samples)
    result = scan(AlwaysDropout(), _toy_splits(), **cfg)
    checks = {c["name"]: c for c in result.attacks.masking["checks"]}
    assert checks["deterministic-output"]["passed"] is False
    assert result.attacks.masking["flagged"] is True
    # the other checks run only when asked for
    assert len(checks) == (1 if masking_samples == 0 else 5)
    assert any(n.startswith("random output: two identical forward passes") for n in result.notes)
    gate = apply_gates(result, GateConfig(fail_on_masking=True))
    assert not gate.passed
    assert gate.failures[0].startswith("gradient masking suspected: deterministic-output")
    # the terminal summary says it, with what it means
    console = Console(width=80, record=True, file=io.StringIO())
    print_summary(result, console)
    assert "random output: two identical forward passes" in " ".join(console.export_text().split())
    # the report's masking table carries the check, its verdict and what it means
    html = render_report([result], plotly="cdn")
    row = html[html.index("<code>deterministic-output</code>") :].split("</tr>")[0]
    assert "FAILED" in row and "every figure is one random draw" in row


def test_a_deterministic_scan_passes_the_masking_gate() -> None:
    torch.manual_seed(0)
    model = AlwaysDropout().net
    result = scan(model, _toy_splits(), eps=0.1, steps=2, hessian_samples=8, masking_samples=0)
    (check,) = result.attacks.masking["checks"]
    assert check["name"] == "deterministic-output" and check["passed"] is True
    assert not any("random output" in n for n in result.notes)
    assert apply_gates(result, GateConfig(fail_on_masking=True)).passed
