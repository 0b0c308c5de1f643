"""The exact route in float32 where the softmax is nearly one-hot.

sum_c p_c ||J_c||^2 - ||p^T J||^2 subtracts two sums that agree to ~1e-5 of their size
there, so float32 kept only 2-3 digits (measured 1e-3 and 4e-3 relative error on the
two layers below); the cotangents e_c - p give non-negative terms and the float64
figure to float32's rounding (measured 5e-7).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wciaudit.curvature.ggn import ggn_traces
from wciaudit.curvature.objective import Objective


class _Functional(nn.Module):
    """The same two layers through F.linear: no Linear module holds the weights, so
    the per-example Jacobian route serves them."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.w1, self.b1 = net[0].weight, net[0].bias
        self.w2, self.b2 = net[2].weight, net[2].bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.relu(F.linear(x, self.w1, self.b1)), self.w2, self.b2)


def _confident() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    g = torch.Generator().manual_seed(0)
    x = 30 * torch.randn(2000, 12, generator=g, dtype=torch.float64)
    with torch.no_grad():
        x = x[torch.softmax(net(x), 1).max(1).values > 0.99999][:32]
        y = net(x).argmax(1)
    assert x.shape[0] == 32
    return net, x, y


@pytest.mark.parametrize("route", ["hooks", "jacobians"])
def test_float32_matches_float64_on_a_nearly_one_hot_softmax(route: str) -> None:
    net, x, y = _confident()
    model = net if route == "hooks" else _Functional(net)
    names = [n for n, p in model.named_parameters() if p.dim() == 2]
    exact = ggn_traces(
        Objective(model, x, y, names, 32, torch.device("cpu")), memory_bytes=2**29, seed=0
    )
    single = copy.deepcopy(model).float()
    got = ggn_traces(
        Objective(single, x.float(), y, names, 32, torch.device("cpu")), memory_bytes=2**29, seed=0
    )
    reason = "layer hooks" if route == "hooks" else "Jacobians"
    for a, b in zip(exact, got, strict=True):
        assert reason in b.route_reason
        assert a.trace > 0
        # float32 rounding of O(10) passes: a few 1e-7 (the old form: 1e-3)
        assert b.trace == pytest.approx(a.trace, rel=2e-5)
