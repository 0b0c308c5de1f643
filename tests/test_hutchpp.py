"""Hutch++ against the dense float64 Hessian block: unbiased, with a calibrated SE.

Over S = 30 seeds the mean estimate's sd is sd / sqrt(S); a bias shows as a
t-statistic beyond 4. The SE is calibrated when the seed-to-seed sd and the median
reported SE agree within [0.5, 2] (the sample sd of 30 values is within ~25%).
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from reference import dense_block, dense_traces, mlp, traces
from scipy import stats
from torch import nn

from wciaudit import scan
from wciaudit.curvature import Objective
from wciaudit.curvature.hutchpp import hutchpp_traces
from wciaudit.data import load_data

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


def _window(seeds: int, slack: float = 1.1) -> tuple[float, float]:
    """sqrt(chi2_{S-1} / (S - 1)) at 0.05 % and 99.95 %, widened by ``slack`` for the
    median SE's own noise (as tests/test_calibration_routes.py)."""
    k = seeds - 1
    lo = math.sqrt(stats.chi2.ppf(0.0005, k) / k) / slack
    hi = math.sqrt(stats.chi2.ppf(0.9995, k) / k) * slack
    return lo, hi


@pytest.mark.slow
def test_the_route_with_its_stop_rule_is_calibrated_against_the_exact_trace() -> None:
    """The route as a scan runs it (``curvature="hutchpp"``: residual probes in rounds
    until relative SE 10 % or the cap), over 120 seeds, against the dense float64
    trace of two GELU layers: |est - exact| <= 2 SE at least as often as the binomial
    0.1 % quantile of 95.4 % allows, and both sd/SE and the sd of the z-scores inside
    the chi-square window of 120 seeds."""
    model, x, y = _setup()
    names = ["1.weight", "3.weight"]
    exact = dense_traces(model, x, y, names)
    seeds = 120
    runs = [
        traces(model, x, y, names, method="hutchpp", tol=0.1, batch_size=40, seed=s)
        for s in range(seeds)
    ]
    lo, hi = _window(seeds)
    for i, name in enumerate(names):
        est = [r[i] for r in runs]
        assert all(e.method == "hutch++" and e.se_covers == ("probes",) for e in est)
        z = [(e.trace - exact[name]) / e.se for e in est]
        covered = sum(abs(v) <= 2 for v in z)
        assert covered >= stats.binom.ppf(0.001, seeds, 0.954), (name, covered)
        sd = statistics.stdev(e.trace for e in est)
        ratio = sd / statistics.median(e.se for e in est)
        assert lo <= ratio <= hi, (name, ratio, lo, hi)
        assert lo <= statistics.stdev(z) <= hi, (name, statistics.stdev(z))


def test_a_scan_on_the_hutchpp_route_combines_the_layers_without_group_shares() -> None:
    """``curvature="hutchpp"`` end to end on a tiny net: every layer takes Hutch++, whose
    estimates carry no group shares, so WCI's SE falls back to the per-layer SEs in
    quadrature and says it covers the probes alone (not the Hessian subset, not the
    attack's starts: Hutch++'s SE does not measure them)."""
    splits = load_data("sample", train_samples=80, test_samples=10, seed=0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.GELU(), nn.Linear(8, 10))
    result = scan(
        net,
        splits,
        eps=0.05,
        steps=2,
        hessian_samples=40,
        masking_samples=0,
        device="cpu",
        curvature="hutchpp",
        tol=0.2,
        max_probes=30,
    )
    assert [la.method for la in result.layers] == ["hutch++", "hutch++"]
    assert all(la.trace_se > 0 and la.se_covers == ["probes"] for la in result.layers)
    assert result.wci is not None and result.wci_se is not None and result.wci_se > 0
    assert "per-layer standard errors" in result.wci_se_method
    assert result.se_covers["wci"] == ["probes"]
    assert result.config["curvature"] == "hutchpp"
    # no second attack: its measurement would have nothing to be paired by
    assert "attack_spread" not in result.timings.parts_s
    assert any("Hutch++ estimates have no group shares" in n for n in result.notes)
