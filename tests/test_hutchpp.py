"""Hutch++ against the dense float64 Hessian block: unbiased, with a calibrated SE.

Over S = 30 seeds the mean estimate's sd is sd / sqrt(S); a bias shows as a
t-statistic beyond 4. The SE is calibrated when the seed-to-seed sd and the median
reported SE agree within [0.5, 2] (the sample sd of 30 values is within ~25%).
"""

from __future__ import annotations

import math
import statistics

import torch
from reference import dense_block, mlp
from torch import nn

from wciaudit.curvature import Objective
from wciaudit.curvature.hutchpp import hutchpp_traces

SEEDS = 30


def _setup():
    model = mlp(nn.GELU)
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(40, 12, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (40,), generator=g),
    )
    return model, x, y


def test_unbiased_and_calibrated() -> None:
    model, x, y = _setup()
    name = "3.weight"
    block = dense_block(model, x, y, name)
    exact = float(block.trace())
    obj = Objective(model, x, y, [name], 40, torch.device("cpu"))
    runs = [
        hutchpp_traces(obj, sketch=5, tol=1e-9, min_probes=20, max_probes=20, seed=s)[0]
        for s in range(SEEDS)
    ]
    traces = [r.trace for r in runs]
    sd = statistics.stdev(traces)
    assert abs(statistics.fmean(traces) - exact) < 4 * sd / math.sqrt(SEEDS)
    assert 0.5 <= sd / statistics.median(r.se for r in runs) <= 2.0
    assert all(r.probes == 20 and r.method == "hutch++" for r in runs)


def test_stops_at_the_tolerance_or_the_cap() -> None:
    model, x, y = _setup()
    obj = Objective(model, x, y, ["1.weight", "5.weight"], 16, torch.device("cpu"))
    for est in hutchpp_traces(obj, sketch=4, tol=0.05, min_probes=10, max_probes=60, seed=1):
        assert est.history[-1][0] == est.probes
        if est.stop_reason == "tol":
            assert est.se <= 0.05 * abs(est.trace)
        else:
            assert est.probes == 60
