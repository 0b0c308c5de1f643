"""Route choice by expected cost, and the WCI precision target."""

from __future__ import annotations

import math

import pytest
import torch
from reference import dense_traces, mlp, traces
from torch import nn

from wciaudit.bounds import weight_curvature_index
from wciaudit.curvature import (
    Objective,
    TraceEstimate,
    choose_routes,
    mean_and_se,
    pool,
)
from wciaudit.curvature.route import expected_labels
from wciaudit.model import weight_layers

CPU = torch.device("cpu")


def _net(classes: int, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(nn.Linear(12, 8), act(), nn.Linear(8, 6), act(), nn.Linear(6, classes))
        .double()
        .eval()
    )


def _routes(model: nn.Module, classes: int, method: str = "auto", n: int = 64) -> list:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    names = [layer.name for layer in weight_layers(model)]
    obj = Objective(model, x, y, names, 32, CPU)
    return choose_routes(
        obj,
        names,
        method=method,
        min_probes=10,
        memory_bytes=2**26,
        tol=0.05,
        max_probes=200,
        classes=classes,
        k_labels=2,
        seed=0,
    )


def test_few_classes_take_the_exact_route_many_take_sampled_labels() -> None:
    few = _routes(_net(10), 10)
    assert {r.route for r in few} == {"exact-ggn"}
    assert (
        "10 backward passes" in few[0].reason
    )  # one per class and "residual vanishes" in few[0].reason
    many = _routes(_net(1000), 1000)
    assert {r.route for r in many} == {"mc-ggn"}
    assert "1000 classes" in many[0].reason
    # the shared passes are divided among the layers that share them
    assert sum(r.cost for r in many) == pytest.approx(expected_labels(2, 64, 0.05))


def test_smooth_layers_take_hutchinson_and_say_why() -> None:
    routes = _routes(_net(10, nn.GELU), 10)
    assert [r.route for r in routes] == ["hutchinson", "hutchinson", "exact-ggn"]
    assert "residual does not vanish" in routes[0].reason


def test_requested_methods() -> None:
    model = _net(10)
    assert {r.route for r in _routes(model, 10, "hutchinson")} == {"hutchinson"}
    assert {r.route for r in _routes(model, 10, "ggn")} == {"exact-ggn"}
    assert {r.route for r in _routes(model, 10, "mc-ggn")} == {"mc-ggn"}
    with pytest.raises(ValueError, match="method"):
        _routes(model, 10, "newton")


def test_layer_traces_records_the_route_and_its_reason() -> None:
    # 200 classes already send every layer to sampled labels, and keep the dense
    # reference of the 6 x C head at 1200 rows (at 1000 classes it took 4 s)
    model = _net(200)
    g = torch.Generator().manual_seed(1)
    x, y = (
        torch.randn(24, 12, generator=g, dtype=torch.float64),
        torch.randint(0, 200, (24,), generator=g),
    )
    names = [layer.name for layer in weight_layers(model)]
    exact = dense_traces(model, x, y, names)
    for est in traces(model, x, y, names, method="auto", k_labels=8, seed=2):
        assert est.method == "mc-ggn" and est.route_reason.startswith("residual vanishes")
        assert abs(est.trace - exact[est.name]) < 4 * est.se


def test_pooling_two_runs_equals_one_run_over_all_probe_values() -> None:
    g = torch.Generator().manual_seed(0)
    a_vals, b_vals = (
        torch.randn(10, generator=g).tolist(),
        (torch.randn(23, generator=g) + 0.3).tolist(),
    )

    def est(values: list[float]) -> TraceEstimate:
        mean, se = mean_and_se(values)
        return TraceEstimate(
            "w", mean, se, len(values), "hutchinson", False, "cap", [[len(values), mean, se]]
        )

    pooled = pool(est(a_vals), est(b_vals))
    mean, se = mean_and_se(a_vals + b_vals)
    assert pooled.probes == 33
    assert pooled.trace == pytest.approx(mean, rel=1e-12)
    assert pooled.se == pytest.approx(se, rel=1e-9)
    assert pooled.history[-1][0] == 33


@pytest.mark.parametrize("p_a", [1, 3])
def test_pooling_grouped_runs_equals_the_grouped_estimate_over_all_values(p_a: int) -> None:
    """With group shares the pooled probe SE is the within-group one of all the values
    (G (p - 1) degrees of freedom), as :func:`grouped_mean_and_se` gives it."""
    from wciaudit.curvature.standard_errors import grouped_mean_and_se

    g = torch.Generator().manual_seed(1)
    groups, sizes = 8, torch.full((8,), 5)
    a_vals = torch.randn(groups, p_a, generator=g, dtype=torch.float64)
    b_vals = torch.randn(groups, 5, generator=g, dtype=torch.float64) + 0.2

    def est(values: torch.Tensor) -> TraceEstimate:
        mean, se, probe_se, sample_se = grouped_mean_and_se(values, sizes, 40, None)
        return TraceEstimate(
            "w", mean, se, values.shape[1], "hutchinson", False, "cap", [], probe_se,
            sample_se, group_shares=tuple(values.mean(1).tolist()),
        )  # fmt: skip

    pooled = pool(est(a_vals), est(b_vals))
    mean, se, probe_se, _ = grouped_mean_and_se(torch.cat([a_vals, b_vals], 1), sizes, 40, None)
    assert pooled.trace == pytest.approx(mean, rel=1e-12)
    assert pooled.probe_se == pytest.approx(probe_se, rel=1e-9)
    assert pooled.se == pytest.approx(se, rel=1e-9)


@pytest.mark.parametrize("tol", [0.1, 0.03])
def test_wci_target_is_met_on_the_reported_wci(tol: float) -> None:
    model = mlp(nn.GELU)
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(40, 12, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (40,), generator=g),
    )
    names = [layer.name for layer in weight_layers(model)]
    params = dict(model.named_parameters())
    norms = [float(params[n].detach().norm()) for n in names]
    exact = dense_traces(model, x, y, names)
    est = traces(
        model, x, y, names, method="hutchinson", tol=tol, max_probes=400, weight_norms=norms, seed=4
    )
    wci, wci_se = weight_curvature_index(norms, [e.trace for e in est], [e.se for e in est])
    capped = any(e.probes == 400 for e in est)
    assert wci_se <= tol * wci or capped
    assert all(e.stop_reason == "tol" and e.converged for e in est) or capped
    for e in est:
        assert abs(e.trace - exact[e.name]) < 4 * e.se
        assert e.history[-1][0] == e.probes
    # probes went where WCI's variance is: not every layer was pushed to tol itself
    per_layer = traces(model, x, y, names, method="hutchinson", tol=tol, max_probes=400, seed=4)
    assert sum(e.probes for e in est) <= sum(e.probes for e in per_layer)
    assert math.isfinite(wci_se)


def test_wci_target_needs_one_weight_norm_per_layer() -> None:
    model = mlp()
    x, y = torch.randn(8, 12, dtype=torch.float64), torch.randint(0, 3, (8,))
    with pytest.raises(ValueError, match="weight_norms"):
        traces(model, x, y, ["1.weight"], weight_norms=[1.0, 2.0])


class _Custom(nn.Module):
    """A linear map that is not an nn.Linear: no hooks, Jacobian or vmap routes only."""

    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in) / fan_in**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


def test_a_layer_too_big_for_its_jacobian_rows_takes_sampled_labels_beside_the_exact_route() -> (
    None
):
    torch.manual_seed(0)
    model = (
        nn.Sequential(nn.Linear(12, 8), nn.ReLU(), _Custom(8, 6), nn.ReLU(), nn.Linear(6, 10))
        .double()
        .eval()
    )
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(64, 12, generator=g, dtype=torch.float64),
        torch.randint(0, 10, (64,), generator=g),
    )
    names = [layer.name for layer in weight_layers(model)]
    # 10 Jacobian rows of 48 float64 weights are 3 840 bytes: over this budget
    est = {e.name: e for e in traces(model, x, y, names, memory_bytes=2000, seed=1)}
    assert [est[n].method for n in names] == ["exact-ggn", "mc-ggn", "exact-ggn"]
    assert "memory budget" in est["2.weight"].route_reason
    exact = dense_traces(model, x, y, ["2.weight"])["2.weight"]
    assert abs(est["2.weight"].trace - exact) < 4 * est["2.weight"].se


def _hutch(name: str, trace: float, probe_se: float, probes: int) -> TraceEstimate:
    return TraceEstimate(
        name=name, trace=trace, se=probe_se, probes=probes, method="hutchinson",
        converged=False, stop_reason="", probe_se=probe_se,
    )  # fmt: skip


def test_the_wci_rounds_stop_where_no_probe_count_within_the_cap_meets_the_target() -> None:
    from wciaudit.curvature.allocation import reachable, term_variance_at

    exact = TraceEstimate(name="head", trace=4.0, se=0.0, probes=0, method="exact-ggn",
                          converged=True, stop_reason="exact")  # fmt: skip
    norms = {"head": 1.0, "a": 1.0, "b": 1.0}
    # far from 0 the term's variance is the delta method's, the probe SE scaled by sqrt(p0 / p)
    far = _hutch("a", 9.0, 0.3, 10)
    assert term_variance_at(1.0, far, 40) == pytest.approx((0.15 / (2 * 3.0)) ** 2)
    # WCI = 2 + 3 = 5; at 200 probes the layer's term SE is 0.011 (0.2 %): reachable at 5 %
    assert reachable(norms, {"head": exact}, {"a": far}, 0.05, 200)
    # layers whose traces, even 2 SE above their estimates (the hopeful end the rule
    # judges at), are 0 and -0.5: a term at 0 has an sd that shrinks only as
    # probes^(-1/4), sqrt(0.23 se) = 0.32 at 200 probes (se 0.45), above 5 % of WCI = 2
    near = {"a": _hutch("a", -4.0, 2.0, 10), "b": _hutch("b", -4.5, 2.0, 10)}
    assert not reachable(norms, {"head": exact}, near, 0.05, 200)
    assert reachable(norms, {"head": exact}, near, 0.05, 10**7)
    # a trace underestimated near 0 by the noise of few probes is not given up on: with
    # ||W|| = 5, at 0.05 +- 0.1 its term at 200 probes (se 0.022) would have sd 0.29
    # against 5 % of WCI = 3.1, i.e. 0.16; but the trace may be 0.25 (2 SE up), whose
    # term's sd is then 0.11, within 5 % of WCI = 4.5
    norms["a"] = 5.0
    hopeful = {"a": _hutch("a", 0.05, 0.1, 10)}
    assert term_variance_at(5.0, hopeful["a"], 200) > (0.05 * (2 + 5 * 0.05**0.5)) ** 2
    assert reachable(norms, {"head": exact}, hopeful, 0.05, 200)
