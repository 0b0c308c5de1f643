"""The threat model every attack shares: its checks, per-example sizes and directions in
L-inf and L2, and the projection onto the eps-ball within the data range.

All tensors are batches, shape (N, ...); sizes and scales are per example, shape (N,).

Example:
    >>> import torch
    >>> d = torch.tensor([[3.0, -4.0], [0.5, 0.0]])
    >>> size(d, Norm.l2).tolist(), size(d, Norm.linf).tolist()
    ([5.0, 0.5], [4.0, 0.5])
    >>> steepest_direction(d, Norm.linf).tolist()
    [[1.0, -1.0], [1.0, 0.0]]
"""

from __future__ import annotations

import math

import torch

from ..config import Norm, parse_norm
from ..errors import ConfigError

#: floor of a per-example size before dividing by it (an all-zero row stays zero)
TINY = 1e-12


def check_threat_model(eps: float, norm: Norm | str, lo: float, hi: float) -> Norm:
    """The norm as a :class:`Norm`, after checking that eps is finite and >= 0 and lo < hi.

    Raises:
        ConfigError: a norm other than L-inf / L2, a bad eps or an empty data range.
    """
    norm = parse_norm(norm)
    if not (eps >= 0 and math.isfinite(eps)):
        raise ConfigError(f"eps must be a finite number >= 0, got {eps}")
    if not lo < hi:
        raise ConfigError(f"the data range needs lo < hi, got [{lo}, {hi}]")
    return norm


def check_counts(**counts: int) -> None:
    """Each of ``counts`` (steps, restarts, targets, queries, ...) must be at least 1.

    Raises:
        ConfigError: naming the first that is not.
    """
    for name, value in counts.items():
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")


def bcast_rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example vector, shape (N,), viewed as (N, 1, ..., 1) to broadcast against ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def size(d: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Each example's ||d_i||: max |d_ij| (L-inf) or sqrt(sum d_ij^2) (L2), shape (N,)."""
    d = d.flatten(1)
    return d.abs().amax(1) if norm is Norm.linf else d.norm(dim=1)


def unit(d: torch.Tensor, norm: Norm) -> torch.Tensor:
    """d_i / ||d_i|| per example: a direction of size 1 in the norm (zero rows stay zero)."""
    return d / bcast_rows(size(d, norm).clamp_min(TINY), d)


def steepest_direction(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The direction of size 1 in the norm that most increases a linear function with
    gradient ``grad``: sign(grad) for L-inf, grad / ||grad||_2 for L2 (per example)."""
    return grad.sign() if norm is Norm.linf else unit(grad, Norm.l2)


def project(
    x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: Norm, lo: float, hi: float
) -> torch.Tensor:
    """Project onto the eps-ball around x (L-inf: clip; L2: rescale), then clip to [lo, hi]."""
    if norm is Norm.linf:
        x_adv = torch.max(torch.min(x_adv, x + eps), x - eps)
    else:
        d = x_adv - x
        scale = (eps / size(d, Norm.l2).clamp_min(TINY)).clamp(max=1.0)
        x_adv = x + d * bcast_rows(scale, x)
    return x_adv.clamp(lo, hi)
