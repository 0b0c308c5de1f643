"""The shared threat model: sizes, directions and the projection against their definitions."""

from __future__ import annotations

import pytest
import torch

from wciaudit.attacks.threat import (
    check_counts,
    check_threat_model,
    project,
    size,
    steepest_direction,
    unit,
)
from wciaudit.config import Norm
from wciaudit.errors import ConfigError


def _batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    d = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    d[5] = 0.0  # an all-zero row stays zero and finite
    return d


@pytest.mark.parametrize("norm", [Norm.linf, Norm.l2])
def test_unit_directions_have_size_one(norm: Norm) -> None:
    d = _batch()
    u = unit(d, norm)
    assert torch.allclose(size(u[:5], norm), torch.ones(5, dtype=torch.float64))
    assert torch.equal(u[5], torch.zeros_like(u[5]))
    p = 2 if norm is Norm.l2 else float("inf")
    assert torch.allclose(size(d, norm), torch.linalg.vector_norm(d.flatten(1), ord=p, dim=1))


@pytest.mark.parametrize("norm", [Norm.linf, Norm.l2])
def test_steepest_direction_attains_the_dual_norm(norm: Norm) -> None:
    """max over ||d|| <= 1 of g . d is the dual norm of g: ||g||_1 (L-inf), ||g||_2 (L2)."""
    g = _batch()[:5]
    s = steepest_direction(g, norm)
    gain = (g * s).flatten(1).sum(1)
    dual = g.flatten(1).abs().sum(1) if norm is Norm.linf else g.flatten(1).norm(dim=1)
    assert torch.allclose(gain, dual)
    assert (size(s, norm) <= 1 + 1e-12).all()


@pytest.mark.parametrize("norm", [Norm.linf, Norm.l2])
def test_project_lands_in_the_ball_and_the_range_and_keeps_inner_points(norm: Norm) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 2, 3, 3, generator=g, dtype=torch.float64)
    far = x + 2 * _batch()
    eps = 0.3
    p = project(far, x, eps, norm, 0.0, 1.0)
    assert (size(p - x, norm) <= eps + 1e-12).all()
    assert p.min() >= 0 and p.max() <= 1
    inner = (x + 0.5 * eps * unit(_batch(), norm)).clamp(0, 1)
    assert torch.allclose(project(inner, x, eps, norm, 0.0, 1.0), inner)
    if norm is Norm.l2:
        # L2 rescales onto the sphere along d (before the range clip): same direction
        d = far - x
        scaled = x + d * (eps / size(d, norm)).clamp(max=1).view(-1, 1, 1, 1)
        assert torch.allclose(p, scaled.clamp(0, 1))


def test_checks_name_what_is_wrong() -> None:
    assert check_threat_model(0.1, "Linf", 0.0, 1.0) is Norm.linf
    assert check_threat_model(0.5, "l2", -1.0, 1.0) is Norm.l2
    with pytest.raises(ConfigError, match="norm"):
        check_threat_model(0.1, "l1", 0.0, 1.0)
    with pytest.raises(ConfigError, match="eps"):
        check_threat_model(float("nan"), "linf", 0.0, 1.0)
    with pytest.raises(ConfigError, match="lo < hi"):
        check_threat_model(0.1, "linf", 1.0, 1.0)
    check_counts(steps=1, restarts=3)
    with pytest.raises(ConfigError, match="restarts must be at least 1, got 0"):
        check_counts(steps=1, restarts=0)
