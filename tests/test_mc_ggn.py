"""Monte Carlo GGN traces against the dense float64 Hessian of tiny ReLU models.

Where the residual vanishes Tr(H_kk) = Tr(GGN_kk), and the sampled-label estimate is
unbiased for it. Over S independent seeds the mean of the estimates has standard
deviation sd / sqrt(S); a bias shows as a t-statistic beyond 4 (probability < 1e-4
per layer for an unbiased estimator). The reported SE is calibrated when the
seed-to-seed sd and the median reported SE agree: with S >= 30 seeds the sample sd is
within about 25% of the true sd (sd of a sample sd ~ sd / sqrt(2 S)), so the ratio
lies in [0.5, 2] unless the SE formula is wrong.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from reference import cnn_bn, dense_traces, mlp

from wciaudit.curvature import Objective
from wciaudit.curvature.mc_ggn import _by_vmap, mc_ggn_traces, per_example_values
from wciaudit.model import weight_layers

SEEDS = 40
CPU = torch.device("cpu")


def _data(n: int, shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


CASES = {"mlp-relu": (mlp, (12,)), "cnn-batchnorm": (cnn_bn, (1, 4, 4))}


@pytest.mark.parametrize("case", list(CASES))
def test_unbiased_and_calibrated_against_the_dense_hessian(case: str) -> None:
    make, shape = CASES[case]
    model = make()
    x, y = _data(40, shape)
    names = [layer.name for layer in weight_layers(model)]
    exact = dense_traces(model, x, y, names)
    runs = [
        mc_ggn_traces(
            Objective(model, x, y, names, 16, CPU), k_labels=4, seed=s, memory_bytes=2**29
        )
        for s in range(SEEDS)
    ]
    for i, name in enumerate(names):
        traces = [r[i].trace for r in runs]
        ses = [r[i].se for r in runs]
        sd = statistics.stdev(traces)
        t = (statistics.fmean(traces) - exact[name]) / (sd / math.sqrt(SEEDS))
        assert abs(t) < 4, (name, t)
        assert 0.5 <= sd / statistics.median(ses) <= 2.0, (name, sd, statistics.median(ses))
        assert all(r[i].sample_se == 0 and r[i].se == r[i].probe_se for r in runs)
        assert runs[0][i].method == "mc-ggn" and runs[0][i].probes == 4
        assert runs[0][i].se_covers == ("sampled-labels",)


def test_subset_se_covers_the_choice_of_examples() -> None:
    """Subsets of n = 30 out of a split of N = 120: the SE (labels and subset, with the
    finite-population factor) must match the spread over seeds that redraw both, and
    the estimates must centre on the whole split's trace."""
    model = mlp()
    x, y = _data(120, (12,), seed=3)
    names = [layer.name for layer in weight_layers(model)]
    exact = dense_traces(model, x, y, names)
    runs = []
    for s in range(SEEDS):
        idx = torch.randperm(120, generator=torch.Generator().manual_seed(100 + s))[:30]
        obj = Objective(model, x[idx], y[idx], names, 16, CPU, n_population=120)
        runs.append(mc_ggn_traces(obj, k_labels=2, seed=s, memory_bytes=2**29))
    for i, name in enumerate(names):
        traces = [r[i].trace for r in runs]
        sd = statistics.stdev(traces)
        t = (statistics.fmean(traces) - exact[name]) / (sd / math.sqrt(SEEDS))
        assert abs(t) < 4, (name, t)
        assert 0.5 <= sd / statistics.median(r[i].se for r in runs) <= 2.0
        assert runs[0][i].sample_se > 0
        assert runs[0][i].se == pytest.approx(math.hypot(runs[0][i].probe_se, runs[0][i].sample_se))
        assert runs[0][i].se_covers == ("sampled-labels", "hessian-subset")


def test_vmap_route_gives_the_hook_route_values() -> None:
    model = cnn_bn()
    x, y = _data(20, (1, 4, 4))
    names = [layer.name for layer in weight_layers(model)]
    obj = Objective(model, x, y, names, 8, CPU)
    u = torch.rand(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hooks = per_example_values(obj, names, u, memory_bytes=2**29)
    by_vmap = {n: torch.zeros(20, 3, dtype=torch.float64) for n in names}
    _by_vmap(obj, names, u, by_vmap, memory_bytes=2000)  # several chunks per batch
    for n in names:
        torch.testing.assert_close(hooks[n], by_vmap[n], rtol=1e-9, atol=1e-14)


def test_batching_does_not_change_the_labels_or_the_numbers() -> None:
    model = mlp()
    x, y = _data(40, (12,))
    names = [layer.name for layer in weight_layers(model)]
    a = mc_ggn_traces(
        Objective(model, x, y, names, 40, CPU), k_labels=3, seed=7, memory_bytes=2**29
    )
    b = mc_ggn_traces(Objective(model, x, y, names, 7, CPU), k_labels=3, seed=7, memory_bytes=2**29)
    for ea, eb in zip(a, b, strict=True):
        assert ea.trace == pytest.approx(eb.trace, rel=1e-12)
        assert ea.se == pytest.approx(eb.se, rel=1e-9)


def test_more_labels_until_the_tolerance_or_the_cap() -> None:
    model = mlp()
    x, y = _data(40, (12,))
    names = [layer.name for layer in weight_layers(model)]
    estimates = mc_ggn_traces(
        Objective(model, x, y, names, 16, CPU),
        k_labels=2,
        tol=0.01,
        max_labels=64,
        seed=0,
        memory_bytes=2**29,
    )
    assert all(len(e.history) > 1 for e in estimates)  # 2 labels do not reach 1%
    for est in estimates:
        assert est.history[-1][0] == est.probes
        if est.stop_reason == "tol":
            assert est.converged and est.se <= 0.01 * est.trace
        else:
            assert est.probes == 64 and not est.converged


def test_one_label_is_refused() -> None:
    model = mlp()
    x, y = _data(8, (12,))
    with pytest.raises(ValueError, match="k_labels"):
        mc_ggn_traces(
            Objective(model, x, y, ["1.weight"], 8, CPU), k_labels=1, seed=0, memory_bytes=2**29
        )
