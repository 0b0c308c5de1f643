"""One probe per group: its estimate and SE, and why the WCI rounds never stop on it.

With one probe per group the probe variance W cannot be measured, and the spread
between groups B is the SE (the "ultimate cluster" estimator). Ground truth: dense
float64 Hessians of each group's share of the mean loss, from which the estimate's
mean, its true variance and the expected value of B follow exactly:

    q_g = v_g^T H_g v_g,  E q_g = t_g = Tr(H_g),  Var q_g = w_g = 2 (||H_g||_F^2 - sum diag^2)
    T = sum_g q_g,        Var T = sum_g w_g            (the whole split: no subset part)
    E B = G/(G-1) sum_g [(t_g - c_g T*)^2 + (1 - c_g)^2 w_g + c_g^2 sum_{h != g} w_h]

with c_g = m_g / n and T* = sum_g t_g. So E B >= Var T, and the tests check that the
reported SE^2 averages to E B over probe seeds (it overstates by the groups' own spread
on the whole split, never understates).
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from reference import dense_block, mlp, rademacher_variance, traces
from torch import nn

from wciaudit.curvature import Objective, hutchinson_traces
from wciaudit.curvature.estimate import TraceEstimate
from wciaudit.curvature.groups import group_count, probe_groups
from wciaudit.curvature.hutchinson import ONE_PROBE
from wciaudit.curvature.rounds import FIRST_PROBES, far_below
from wciaudit.model import weight_layers

N = 48  # 12 groups of 4
SEEDS = 200
NAMES = ["1.weight", "5.weight"]


def _case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, 12, generator=g, dtype=torch.float64)
    return mlp(nn.GELU), x, torch.randint(0, 3, (N,), generator=g)


def _exact(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, group_seed: int):  # noqa: ANN202
    """(Tr H, Var T, E B) for one layer under the group split of ``group_seed``."""
    groups = group_count(N)
    assignment = probe_groups(N, groups, group_seed)
    t, w, m = [], [], []
    for g in range(groups):
        rows = torch.nonzero(assignment == g).flatten()
        block = dense_block(model, x[rows], y[rows], name) * len(rows) / N
        t.append(float(block.diagonal().sum()))
        w.append(rademacher_variance(block))
        m.append(len(rows))
    total, var_t = math.fsum(t), math.fsum(w)
    c = [k / N for k in m]
    expected_b = (
        groups
        / (groups - 1)
        * math.fsum(
            (t[g] - c[g] * total) ** 2 + (1 - c[g]) ** 2 * w[g] + c[g] ** 2 * (var_t - w[g])
            for g in range(groups)
        )
    )
    return total, var_t, expected_b


@pytest.mark.slow
def test_one_probe_per_group_is_unbiased_and_its_se_is_the_group_spread() -> None:
    model, x, y = _case()
    obj = Objective(model, x, y, NAMES, 64, torch.device("cpu"))
    runs = [
        hutchinson_traces(
            obj, probes=1, seed=s, group_seed=0, tol=0.05, max_probes=200, min_probes=10
        )
        for s in range(SEEDS)
    ]
    for k, name in enumerate(NAMES):
        total, var_t, expected_b = _exact(model, x, y, name, group_seed=0)
        traces = [r[k].trace for r in runs]
        se2 = [r[k].se ** 2 for r in runs]
        assert all(r[k].probes == 1 and r[k].route_reason == ONE_PROBE for r in runs)
        # the trace: the true variance is known, so the mean is held to 4 of its SEs
        assert abs(statistics.fmean(traces) - total) <= 4 * math.sqrt(var_t / SEEDS)
        # the seeds' variance estimates Var T (relative SE about sqrt(2 / SEEDS) = 8 %)
        assert abs(statistics.variance(traces) / var_t - 1) <= 4 * math.sqrt(2 / SEEDS)
        # SE^2 averages to E B: its seed-to-seed sd, over sqrt(SEEDS), bounds the gap
        gap = abs(statistics.fmean(se2) - expected_b)
        assert gap <= 4 * statistics.stdev(se2) / math.sqrt(SEEDS), (name, gap, expected_b)
        assert expected_b >= var_t  # it never understates


def test_wci_rounds_never_stop_on_one_probe_per_group() -> None:
    """One probe per group under-covers when a rule stops on it (its SE is correlated
    with the estimate): the WCI rounds' first look leaves a layer at one probe only
    where its trace lies far below 0, and tops every other layer up to
    ``FIRST_PROBES`` even where a target as loose as 50 % would be met at once."""
    model, x, y = _case()
    names = [layer.name for layer in weight_layers(model)]
    params = dict(model.named_parameters())
    norms = [float(params[n].detach().norm()) for n in names]
    est = traces(model, x, y, names, method="hutchinson", tol=0.5, weight_norms=norms)
    assert all(e.history[0][0] == 1 for e in est)  # the look: 12 groups >= min_probes 10
    for e in est:
        assert e.probes >= FIRST_PROBES or (e.probes == 1 and far_below(e)), e
    assert any(e.probes >= FIRST_PROBES for e in est)
    held = traces(
        model, x, y, names, method="hutchinson", tol=0.5, weight_norms=norms, layer_tol=0.5
    )
    assert all(e.history[0][0] >= 2 for e in held)


def test_a_far_below_layer_keeps_its_look() -> None:
    def look(trace: float, se: float) -> TraceEstimate:
        return TraceEstimate("w", trace, se, 1, "hutchinson", True, "tol", [], se, 0.0,
                             group_shares=(trace / 16,) * 16)  # fmt: skip

    assert far_below(look(-10.0, 1.0)) and not far_below(look(-4.0, 1.0))
    assert not far_below(look(3.0, 1.0))
