"""An out-of-memory error in the batched Hessian-vector products reaches the batch-size
retry; only a missing batching rule switches to one product per probe."""

from __future__ import annotations

import pytest
import torch
from reference import mlp
from torch import nn

from wciaudit.curvature.hutchinson import hutchinson_traces
from wciaudit.curvature.hvp import BatchedHvp
from wciaudit.curvature.objective import Objective
from wciaudit.retry import run_with_batch_retry

REAL_GRAD = torch.autograd.grad


def _failing_grad(message: str, rows_above: int, seen: list[int]):
    """autograd.grad whose batched calls raise ``message`` while the graph's batch has
    more than ``rows_above`` rows (read from the first probe dimension's graph size)."""

    def grad(*args, **kwargs):  # noqa: ANN002, ANN003
        if kwargs.get("is_grads_batched"):
            seen.append(_ROWS[0])
            if _ROWS[0] > rows_above:
                raise RuntimeError(message)
        return REAL_GRAD(*args, **kwargs)

    return grad


_ROWS = [0]


def _objective(batch_size: int) -> Objective:
    model = mlp(nn.Tanh)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    _ROWS[0] = batch_size
    return Objective(model, x, y, ["1.weight", "5.weight"], batch_size, torch.device("cpu"))


def _run(batch_size: int):
    return hutchinson_traces(
        _objective(batch_size), max_probes=4, min_probes=4, groups=1, tol=0.05, seed=0
    )


def test_out_of_memory_reaches_the_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    oom = "CUDA out of memory. Tried to allocate 2.00 GiB"
    monkeypatch.setattr(torch.autograd, "grad", _failing_grad(oom, 4, seen))
    notes: list[tuple[int, int]] = []
    got, size = run_with_batch_retry(_run, 16, on_retry=lambda a, b, _m: notes.append((a, b)))
    assert size == 4 and notes == [(16, 8), (8, 4)]
    # at batch 4 the products stayed batched: the OOM did not switch them off
    assert seen.count(4) >= 2
    monkeypatch.setattr(torch.autograd, "grad", REAL_GRAD)
    assert [e.trace for e in got] == [e.trace for e in _run(4)]


def test_a_missing_batching_rule_falls_back_to_a_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    rule = "Batching rule not implemented for aten::something"
    monkeypatch.setattr(torch.autograd, "grad", _failing_grad(rule, 0, seen))
    hvp = BatchedHvp()
    objective = _objective(16)
    weights = objective.weights()
    loss = objective.loss(weights, objective.x, objective.y)
    (grad,) = REAL_GRAD(loss, [weights["5.weight"]], create_graph=True)
    probes = torch.ones(3, *weights["5.weight"].shape, dtype=torch.float64)
    values = hvp("5.weight", grad, weights["5.weight"], probes)
    assert not hvp.batched_ok and values.shape == (3,) and len(seen) == 1
