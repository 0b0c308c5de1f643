"""Exact reference computations for the tests (dense float64, brute force)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian
from torch.nn.attention import SDPBackend, sdpa_kernel


def dense_block(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str) -> torch.Tensor:
    """The diagonal Hessian block d^2 mean-CE / dW^2 for one parameter, as a dense matrix."""
    w0 = dict(model.named_parameters())[name].detach()

    def loss(w: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, {name: w}, (x,)), y)

    k = w0.numel()
    with sdpa_kernel([SDPBackend.MATH]):  # fused attention has no forward-mode AD
        return hessian(loss)(w0).detach().reshape(k, k)


def dense_traces(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str]) -> dict[str, float]:
    return {n: float(dense_block(model, x, y, n).diagonal().sum()) for n in names}


def rademacher_variance(block: torch.Tensor) -> float:
    """Var(v^T A v) for Rademacher v and symmetric A: 2 (||A||_F^2 - sum_i A_ii^2)."""
    a = 0.5 * (block + block.T)
    return float(2 * (a.pow(2).sum() - a.diagonal().pow(2).sum()))


def mlp(act: type[nn.Module] = nn.ReLU) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(12, 8), act(), nn.Linear(8, 6), act(), nn.Linear(6, 3)
    ).double().eval()


def cnn_bn() -> nn.Module:
    """A CNN with eval-mode BatchNorm whose running statistics are not trivial."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(16, 3),
    ).double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


class TiedNet(nn.Module):
    """One weight used twice (tied): the output is quadratic in it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.a = nn.Linear(6, 6, bias=False)
        self.b = nn.Linear(6, 6, bias=False)
        self.b.weight = self.a.weight
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x.flatten(1))))))
