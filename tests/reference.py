"""Exact reference computations for the tests (dense float64, brute force)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from wciaudit.config import ScanConfig
from wciaudit.curvature import Objective, TraceEstimate, layer_traces


def dense_block(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str) -> torch.Tensor:
    """The diagonal Hessian block d^2 mean-CE / dW^2 for one parameter, as a dense matrix."""
    w0 = dict(model.named_parameters())[name].detach()

    k = w0.numel()
    # one gradient graph, then one Hessian row per double backward: exact, and the
    # memory of one backward pass (torch.func.hessian vmaps every row through the
    # model at once, gigabytes on a small ViT)
    with sdpa_kernel([SDPBackend.MATH]):  # fused attention has no double backward
        w = w0.clone().requires_grad_(True)
        loss = F.cross_entropy(functional_call(model, {name: w}, (x,)), y)
        (grad,) = torch.autograd.grad(loss, w, create_graph=True)
        grad = grad.reshape(-1)
        rows = [torch.autograd.grad(grad[i], w, retain_graph=True)[0].reshape(-1) for i in range(k)]
    return torch.stack(rows).detach()


def dense_traces(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str]
) -> dict[str, float]:
    return {n: float(dense_block(model, x, y, n).diagonal().sum()) for n in names}


def rademacher_variance(block: torch.Tensor) -> float:
    """Var(v^T A v) for Rademacher v and symmetric A: 2 (||A||_F^2 - sum_i A_ii^2)."""
    a = 0.5 * (block + block.T)
    return float(2 * (a.pow(2).sum() - a.diagonal().pow(2).sum()))


def mlp(act: type[nn.Module] = nn.ReLU) -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Flatten(), nn.Linear(12, 8), act(), nn.Linear(8, 6), act(), nn.Linear(6, 3)
        )
        .double()
        .eval()
    )


def cnn_bn() -> nn.Module:
    """A CNN with eval-mode BatchNorm whose running statistics are not trivial."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16, 3),
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


def dense_ggn_traces(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str]
) -> dict[str, float]:
    """Tr of the Gauss-Newton block mean_i J_i^T (diag p_i - p_i p_i^T) J_i, from dense
    per-example Jacobians of the logits with respect to the (shared) weight tensor."""
    out = {}
    for name in names:
        w0 = dict(model.named_parameters())[name].detach()
        z = functional_call(model, {name: w0}, (x,)).detach()
        p = torch.softmax(z, dim=1)
        total = 0.0
        for i in range(x.shape[0]):
            jac = torch.func.jacrev(
                lambda w, i=i, name=name: functional_call(model, {name: w}, (x[i : i + 1],))[0]
            )(w0)
            j = jac.reshape(z.shape[1], -1)
            g = torch.diag(p[i]) - torch.outer(p[i], p[i])
            total += float((j.T @ g @ j).diagonal().sum().detach())
        out[name] = total / x.shape[0]
    return out


class ParallelTied(nn.Module):
    """One Linear weight assigned to two modules on parallel ReLU branches: the logits
    stay piecewise linear in it, so its block is a Gauss-Newton block."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Linear(6, 5, bias=False)
        self.b = nn.Linear(6, 5, bias=False)
        self.b.weight = self.a.weight
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.head(torch.relu(self.a(x[:, :6])) + torch.relu(self.b(x[:, 6:])))


class CalledTwice(nn.Module):
    """One Linear module called twice per forward, on two parallel halves of the input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.lin = nn.Linear(6, 4)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.head(
            torch.cat([torch.relu(self.lin(x[:, :6])), torch.relu(self.lin(x[:, 6:]))], 1)
        )


class TwiceInOneCall(nn.Linear):
    """A Linear whose own forward uses its weight twice: a hook on the module sees one
    call, the weight enters two products."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.in_features
        return F.linear(x[..., :k], self.weight) + F.linear(x[..., k:], self.weight, self.bias)


class UsedTwiceOneModule(nn.Module):
    """A weight called twice by one module (:class:`TwiceInOneCall`)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.lin = TwiceInOneCall(6, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.lin(x.flatten(1))))


class FunctionalReuse(nn.Module):
    """A module's weight also used by a functional call elsewhere (a tied head)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.lin = nn.Linear(6, 4, bias=False)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.head(
            torch.relu(self.lin(x[:, :6])) + torch.relu(F.linear(x[:, 6:], self.lin.weight))
        )


class SerialCalledTwice(nn.Module):
    """One Linear module applied twice in series: the logits are quadratic in its weight."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.lin = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.lin(torch.relu(self.lin(x.flatten(1))))))


class ConvTied(nn.Module):
    """Two convolutions with other strides sharing one weight, on parallel branches."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.c1 = nn.Conv2d(1, 3, 3, padding=1)
        self.c2 = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.c2.weight = self.c1.weight
        self.head = nn.Linear(3 * 16 + 3 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(
            torch.cat([torch.relu(self.c1(x)).flatten(1), torch.relu(self.c2(x)).flatten(1)], 1)
        )


def traces(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    names: list[str],
    *,
    method: str = "auto",
    n_population: int | None = None,
    weight_norms: list[float] | None = None,
    **settings: object,
) -> list[TraceEstimate]:
    """:func:`wciaudit.curvature.layer_traces` on (x, y) in one process: ``method`` is
    the config's ``curvature``, the other keywords are :class:`ScanConfig` fields
    (``batch_size`` sets the objective's too)."""
    config = ScanConfig(curvature=method, **settings)
    device = next(model.parameters()).device
    objective = Objective(
        model, x, y, list(names), config.batch_size, device, n_population=n_population
    )
    return layer_traces(objective, config, weight_norms=weight_norms)
