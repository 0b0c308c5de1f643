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


def test_a_float32_model_agrees_with_the_float64_block() -> None:
    # a float32 model's products are float32 while Q is float64: the projection must
    # not mix the two (it raised), and the estimate must match the float64 block
    model, x, y = _setup()
    name = "3.weight"
    exact = float(dense_block(model, x, y, name).trace())
    obj = Objective(model.float(), x.float(), y, [name], 40, torch.device("cpu"))
    (est,) = hutchpp_traces(obj, sketch=5, tol=1e-9, min_probes=40, max_probes=40, seed=0)
    # float32 rounding (~1e-6 relative) is far below the probe SE
    assert abs(est.trace - exact) < 4 * est.se + 1e-4 * abs(exact)
    assert est.probes == 40 and math.isfinite(est.se) and est.se > 0


def test_runs_under_the_math_attention_kernel() -> None:
    # fused SDPA kernels have no double backward: Hutch++ must select the math kernel
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(4, 12)
            self.head = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # the kernel choice that CUDA would follow (the flags are global, CPU too)
            fused.append(
                torch.backends.cuda.flash_sdp_enabled()
                or torch.backends.cuda.mem_efficient_sdp_enabled()
            )
            q, k, v = self.qkv(x).chunk(3, dim=-1)  # x: (N, tokens, 4)
            return self.head(nn.functional.scaled_dot_product_attention(q, k, v).mean(1))

    fused: list[bool] = []
    torch.manual_seed(0)
    model = Attention().double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 2, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=g)
    exact = float(dense_block(model, x, y, "qkv.weight").trace())
    obj = Objective(model, x, y, ["qkv.weight"], 12, torch.device("cpu"))
    fused.clear()
    (est,) = hutchpp_traces(obj, sketch=4, tol=1e-9, min_probes=30, max_probes=30, seed=0)
    assert fused and not any(fused)
    assert abs(est.trace - exact) < 4 * est.se + 1e-9
