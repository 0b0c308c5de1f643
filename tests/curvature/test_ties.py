"""Tied weights on the exact route: a weight shared by modules, a module called twice,
a weight used twice by one module, against dense float64 Hessians (torch.func.hessian).

The exact route is exact up to float64 rounding, so it must agree to 1e-10 relative.
"""

from __future__ import annotations

import copy

import pytest
import torch
from reference import (
    CalledTwice,
    ConvTied,
    FunctionalReuse,
    ParallelTied,
    SerialCalledTwice,
    TiedNet,
    UsedTwiceOneModule,
    dense_ggn_traces,
    dense_traces,
    traces,
)
from torch import nn

from wciaudit.curvature import Objective, ggn_traces, residual_vanishes
from wciaudit.model import weight_layers

N = 30


def _data(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((N, *shape), generator=g, dtype=torch.float64), torch.randint(
        0, 3, (N,), generator=g
    )


# model, input shape, the tied layer, the route reason it must give
PARALLEL = {
    "two-modules-share-a-weight": (ParallelTied, (12,), "a.weight", "2 modules share the weight"),
    "convolutions-share-a-weight": (ConvTied, (1, 4, 4), "c1.weight", "2 modules share the weight"),
    "module-called-twice": (CalledTwice, (12,), "lin.weight", "layer hooks"),
    "weight-used-twice-in-one-module": (
        UsedTwiceOneModule,
        (12,),
        "lin.weight",
        "per-example Jacobians",
    ),
    "module-weight-reused-functionally": (
        FunctionalReuse,
        (12,),
        "lin.weight",
        "per-example Jacobians",
    ),
}


@pytest.mark.parametrize("case", list(PARALLEL))
def test_parallel_ties_on_the_exact_route_equal_the_dense_hessian(case: str) -> None:
    make, shape, tied, reason = PARALLEL[case]
    model = make().double().eval()
    x, y = _data(shape)
    names = [layer.name for layer in weight_layers(model)]
    assert tied in names
    exact = dense_traces(model, x, y, names)
    for est in traces(model, x, y, names, method="ggn", batch_size=7):
        assert est.method == "exact-ggn", est.name
        assert est.trace == pytest.approx(exact[est.name], rel=1e-10), est.name
        if est.name == tied:
            assert reason in est.route_reason


@pytest.mark.parametrize("make", [TiedNet, SerialCalledTwice])
def test_serial_ties_leave_the_exact_route_and_their_ggn_is_still_exact(
    make: type[nn.Module],
) -> None:
    """Two uses in series make the logits quadratic in the weight: the Hessian has a
    residual, so the route must be Hutchinson; the Gauss-Newton part itself, asked for
    directly, must still sum both uses per example."""
    model = make().double().eval()
    x, y = _data((6,))
    names = [layer.name for layer in weight_layers(model)]
    tied = names[0]
    obj = Objective(model, x, y, names, 7, torch.device("cpu"))
    assert residual_vanishes(obj, seed=0)[tied] is False
    ggn = {e.name: e.trace for e in ggn_traces(obj, memory_bytes=2**29, seed=0)}
    ref = dense_ggn_traces(model, x, y, names)
    for n in names:
        assert ggn[n] == pytest.approx(ref[n], rel=1e-10), n
    exact = dense_traces(model, x, y, [tied])[tied]
    est = {e.name: e for e in traces(model, x, y, names, method="auto", max_probes=400, seed=1)}[
        tied
    ]
    assert est.method == "hutchinson"
    assert abs(est.trace - exact) < 4 * est.se


def test_float32_exact_route_runs_in_float32(timm_resnet_case) -> None:  # noqa: ANN001
    """Model and data in float32; the reference is the dense float64 Hessian. Per-example
    terms are formed in float32 (relative rounding ~1e-7 per product, sums of a few
    hundred terms), so 1e-4 relative is a float32 tolerance with room."""
    model, x, y, names, exact = timm_resnet_case
    model = copy.deepcopy(model)
    estimates = traces(model, x, y, names, method="auto")
    assert next(model.parameters()).dtype == torch.float32
    for est in estimates:
        assert est.method == "exact-ggn"
        assert est.trace == pytest.approx(exact[est.name], rel=1e-4)
