"""The one Hessian-vector product (:mod:`wciaudit.curvature.hvp`) against the dense
float64 block: products and quadratic forms, batched and looped."""

from __future__ import annotations

import pytest
import torch
from reference import cnn_bn, dense_block, mlp
from torch import nn

from wciaudit.curvature.hvp import BatchedHvp
from wciaudit.curvature.objective import Objective


@pytest.mark.parametrize("case", ["linear", "conv"])
def test_products_and_forms_equal_the_dense_block(case: str) -> None:
    if case == "linear":
        model, name = mlp(nn.GELU), "3.weight"
        x = torch.randn(10, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    else:
        model, name = cnn_bn(), "4.weight"
        x = torch.rand(10, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(10) % 3
    obj = Objective(model, x, y, [name], 10, torch.device("cpu"))
    weights = obj.weights()
    (grad,) = torch.autograd.grad(obj.loss(weights, x, y), [weights[name]], create_graph=True)
    shape = weights[name].shape
    directions = torch.randn(3, *shape, dtype=torch.float64)
    block = dense_block(model, x, y, name)
    expected = directions.flatten(1) @ block.T
    hvp = BatchedHvp()
    got = hvp.products(grad, weights[name], directions)
    assert torch.allclose(got.flatten(1), expected, rtol=1e-9, atol=1e-12)
    forms = hvp(name, grad, weights[name], directions)
    looped = BatchedHvp._loop(grad, weights[name], directions, 1)
    want = (expected * directions.flatten(1)).sum(1)
    assert torch.allclose(forms, want, rtol=1e-9, atol=1e-12)
    assert torch.allclose(looped, want, rtol=1e-9, atol=1e-12)
