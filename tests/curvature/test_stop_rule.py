"""Coverage of Hutchinson's stop rule at its defaults (tol 5 %, 10 probes first): on a
tiny model with exact traces, |estimate - exact| <= 2 SE must hold in >= 93 % of runs.

300 runs (100 seeds x 3 layers) give a binomial SE of sqrt(0.93 * 0.07 / 300) = 1.5 %,
so the test asserts coverage >= 0.93 - 3 * 0.015.
"""

from __future__ import annotations

import math

import pytest
import torch
from reference import dense_traces, mlp
from torch import nn

from wciaudit.curvature import Objective, hutchinson_traces

SEEDS = 100


@pytest.mark.slow
def test_stop_rule_covers_the_exact_trace() -> None:
    model = mlp(nn.GELU)
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn((40, 12), generator=g, dtype=torch.float64),
        torch.randint(0, 3, (40,), generator=g),
    )
    names = ["1.weight", "3.weight", "5.weight"]
    exact = dense_traces(model, x, y, names)
    obj = Objective(model, x, y, names, 64, torch.device("cpu"))
    hits = total = 0
    for seed in range(SEEDS):
        for e in hutchinson_traces(obj, seed=seed):
            hits += abs(e.trace - exact[e.name]) <= 2 * e.se
            total += 1
    floor = 0.93 - 3 * math.sqrt(0.93 * 0.07 / total)
    assert hits / total >= floor, (hits, total)
