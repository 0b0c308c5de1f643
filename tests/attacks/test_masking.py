"""Gradient-masking checks: models built to mask gradients are flagged, the sample CNN is not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wciaudit.attacks.masking import binomial_tail, masking_checks, sign_test_p
from wciaudit.config import ScanConfig


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
