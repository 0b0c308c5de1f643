"""Chunk sizes of per-example Jacobians and gradients: the budget, the device's free
memory and the backward temporaries."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wciaudit.curvature import memory
from wciaudit.curvature.ggn import ggn_traces
from wciaudit.curvature.memory import activation_numel, budget_from, chunk_examples
from wciaudit.curvature.objective import Objective


class _Functional(nn.Module):
    """Flatten, then two layers through F.linear (the per-example Jacobian route)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(8, 16, dtype=torch.float64) / 4)
        self.w2 = nn.Parameter(torch.randn(3, 8, dtype=torch.float64) / 3)
        self.flat = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.relu(F.linear(self.flat(x), self.w1)), self.w2)


def _objective(n: int = 12) -> Objective:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return Objective(_Functional(), x, y, ["w1", "w2"], n, torch.device("cpu"))


def test_the_budget_is_at_most_half_the_free_memory() -> None:
    assert budget_from(512 * 2**20, 8 * 2**30) == 512 * 2**20
    assert budget_from(512 * 2**20, 2**29) == 2**28
    assert budget_from(512, 0) == 1


def test_cuda_asks_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[torch.device] = []

    def fake(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return 100 * 2**20, 80 * 2**30

    monkeypatch.setattr(torch.cuda, "mem_get_info", fake)
    assert memory.memory_budget(torch.device("cuda", 1), 512 * 2**20) == 50 * 2**20
    assert asked == [torch.device("cuda", 1)]
    assert memory.memory_budget(torch.device("cpu"), 512 * 2**20) == 512 * 2**20


def test_a_chunk_counts_rows_squares_and_backward_temporaries() -> None:
    obj = _objective()
    # the only leaf module is Flatten: 16 numbers per example
    assert activation_numel(obj) == 16
    numel = 8 * 16 + 3 * 8
    per_example = 3 * (2 * numel + 16) * 8  # 3 classes, float64
    assert chunk_examples(obj, 3, numel, 5 * per_example) == 5
    assert chunk_examples(obj, 3, numel, 5 * per_example - 1) == 4
    assert chunk_examples(obj, 3, numel, 1) == 1


def test_the_exact_route_runs_in_chunks_and_gives_the_same_traces() -> None:
    obj = _objective()
    numel = 8 * 16 + 3 * 8
    per_example = 3 * (2 * numel + 16) * 8
    sizes: list[int] = []
    small = ggn_traces(obj, memory_bytes=5 * per_example, progress=sizes.append, seed=0)
    assert sizes == [5, 5, 2]
    whole = ggn_traces(obj, memory_bytes=2**29, seed=0)
    for a, b in zip(small, whole, strict=True):
        assert "Jacobians" in a.route_reason
        assert a.trace == pytest.approx(b.trace, rel=1e-12)
