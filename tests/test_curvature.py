"""Per-layer traces against exact dense float64 Hessians (SPEC: the estimator must agree
with an exact computation within statistical error).

Tolerances: the exact route must match to 1e-6 relative (it is exact up to rounding).
Hutchinson estimates must lie within 4 reported standard errors of the exact trace:
with >= 10 probes, a t-statistic beyond 4 has probability < 0.3%, and seeds are fixed,
so a failure means a biased estimator or a wrong SE, not bad luck.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from reference import TiedNet, cnn_bn, dense_block, dense_traces, mlp, rademacher_variance, traces
from torch import nn

from wciaudit.curvature import Objective, hutchinson_traces, residual_vanishes
from wciaudit.curvature.hutchinson import GROUPS, probe_groups
from wciaudit.model import weight_layers

N = 40


def _data(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((N, *shape), generator=g, dtype=torch.float64), torch.randint(
        0, 3, (N,), generator=g
    )


CASES = {
    "mlp-relu": (mlp, (12,)),
    "cnn-batchnorm": (cnn_bn, (1, 4, 4)),
    "mlp-gelu": (lambda: mlp(nn.GELU), (12,)),
}


@pytest.mark.parametrize("case", ["mlp-relu", "cnn-batchnorm"])
def test_exact_route_equals_dense_hessian(case: str) -> None:
    make, shape = CASES[case]
    model = make()
    x, y = _data(shape)
    names = [layer.name for layer in weight_layers(model)]
    exact = dense_traces(model, x, y, names)
    estimates = traces(model, x, y, names, method="auto", batch_size=16)
    for est in estimates:
        assert est.method == "exact-ggn"
        assert est.probes == "exact" and est.se == 0.0
        assert est.trace == pytest.approx(exact[est.name], rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_hutchinson_within_four_standard_errors(case: str) -> None:
    make, shape = CASES[case]
    model = make()
    x, y = _data(shape)
    names = [layer.name for layer in weight_layers(model)]
    exact = dense_traces(model, x, y, names)
    for est in traces(
        model, x, y, names, method="hutchinson", batch_size=16, max_probes=300, seed=3
    ):
        assert est.method == "hutchinson" and isinstance(est.probes, int) and est.probes >= 10
        assert abs(est.trace - exact[est.name]) < 4 * est.se, (
            est.name,
            est.trace,
            exact[est.name],
            est.se,
        )


def test_smooth_layers_are_not_given_the_gauss_newton_route() -> None:
    model = mlp(nn.GELU)
    x, y = _data((12,))
    names = [layer.name for layer in weight_layers(model)]
    vanishes = residual_vanishes(Objective(model, x, y, names, 16, torch.device("cpu")), seed=0)
    # GELU follows the first two layers; only the last layer is linear in its weights
    assert vanishes == {"1.weight": False, "3.weight": False, "5.weight": True}
    methods = [e.method for e in traces(model, x, y, names, method="auto")]
    assert methods == ["hutchinson", "hutchinson", "exact-ggn"]


def test_a_model_linear_in_its_weights_takes_the_exact_route() -> None:
    """A softmax regression (no nonlinearity): the gradient J^T r does not depend on W at
    all, so autograd gives it no graph; the residual is exactly 0 and the trace exact."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 3)).double()
    x, y = _data((12,))
    names = ["0.weight"]
    assert residual_vanishes(Objective(model, x, y, names, 16, torch.device("cpu")), seed=0) == {
        "0.weight": True
    }
    (est,) = traces(model, x, y, names, method="auto")
    assert est.method == "exact-ggn"
    assert est.trace == pytest.approx(dense_traces(model, x, y, names)["0.weight"], rel=1e-9)


def test_standard_error_matches_the_rademacher_variance() -> None:
    """The probe SE must estimate sqrt(sum_g Var(v_g^T H_g v_g) / p): one independent
    probe per group g, H_g the group's share of the mean-loss Hessian (m_g / n times
    its own mean-loss Hessian), Var = 2(||H_g||_F^2 - sum H_g,ii^2)."""
    model = mlp(nn.GELU)
    x, y = _data((12,))
    name = "3.weight"
    groups = probe_groups(N, GROUPS, 0)
    sigma = math.sqrt(
        sum(
            rademacher_variance(
                dense_block(model, x[groups == g], y[groups == g], name) * (groups == g).sum() / N
            )
            for g in range(int(groups.max()) + 1)
        )
    )
    obj = Objective(model, x, y, [name], 64, torch.device("cpu"))
    (est,) = hutchinson_traces(obj, tol=1e-9, max_probes=400, min_probes=400, seed=0)
    assert est.probes == 400 and est.stop_reason == "cap"
    assert est.se == est.probe_se and est.sample_se == 0.0 and est.se_covers == ("probes",)
    sd_hat = est.se * math.sqrt(est.probes)
    # 400 probes in each of 10 groups: the pooled sd is within a few % of sigma
    assert 0.85 * sigma < sd_hat < 1.15 * sigma


def test_stop_rule_is_stated_per_layer() -> None:
    model = mlp(nn.GELU)
    x, y = _data((12,))
    names = [layer.name for layer in weight_layers(model)]
    for est in traces(model, x, y, names, method="hutchinson", tol=0.1, max_probes=40):
        if est.stop_reason == "tol":
            assert est.converged and est.se <= 0.1 * abs(est.trace)
        else:
            assert est.stop_reason == "cap" and est.probes == 40 and not est.converged
        assert est.history[-1][0] == est.probes


def test_tied_weight_is_one_layer_and_its_block_is_taken_on_the_shared_tensor() -> None:
    model = TiedNet().double().eval()
    names = [layer.name for layer in weight_layers(model)]
    assert names == ["a.weight", "head.weight"]
    x, y = _data((6,))
    exact = dense_traces(model, x, y, names)
    estimates = {
        e.name: e for e in traces(model, x, y, names, method="auto", max_probes=400, seed=1)
    }
    # the tied weight enters twice, so the output is quadratic in it: no exact GGN route
    assert estimates["a.weight"].method == "hutchinson"
    assert abs(estimates["a.weight"].trace - exact["a.weight"]) < 4 * estimates["a.weight"].se
    assert estimates["head.weight"].trace == pytest.approx(exact["head.weight"], rel=1e-6)


def test_batching_does_not_change_the_numbers() -> None:
    model = mlp(nn.GELU)
    x, y = _data((12,))
    names = [layer.name for layer in weight_layers(model)]
    one = traces(model, x, y, names, method="auto", batch_size=N, seed=5)
    many = traces(model, x, y, names, method="auto", batch_size=7, seed=5)
    for a, b in zip(one, many, strict=True):
        assert a.probes == b.probes
        assert a.trace == pytest.approx(b.trace, rel=1e-9)


def test_same_seed_same_estimate_other_seed_other_probes() -> None:
    model = mlp(nn.GELU)
    x, y = _data((12,))
    names = ["1.weight"]
    a = traces(model, x, y, names, method="hutchinson", seed=0)[0]
    b = traces(model, x, y, names, method="hutchinson", seed=0)[0]
    c = traces(model, x, y, names, method="hutchinson", seed=1)[0]
    assert a.trace == b.trace and a.se == b.se
    assert a.trace != c.trace


def test_exact_route_on_a_timm_resnet_in_float64(timm_resnet_case) -> None:  # noqa: ANN001
    model, x, y, names, exact = timm_resnet_case
    m64 = copy.deepcopy(model).double()
    estimates = traces(m64, x.double(), y, names, method="auto")
    for est in estimates:
        assert est.method == "exact-ggn"
        assert est.trace == pytest.approx(exact[est.name], rel=1e-6)


class _Mixed(nn.Module):
    """Grouped and strided convolutions, an in-place ReLU right after a conv, and a
    Linear applied per token (3-D input): every case of the per-example norm code."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2)
        self.c3 = nn.Conv2d(8, 8, 1, groups=8, bias=False)
        self.tok = nn.Linear(8, 5)
        self.head = nn.Linear(5 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu_(self.c1(x))
        h = torch.relu(self.c3(torch.relu(self.c2(h))))  # (N, 8, 2, 2)
        tokens = h.flatten(2).transpose(1, 2)  # (N, 4, 8)
        return self.head(torch.relu(self.tok(tokens)).flatten(1))


def test_backward_route_equals_the_jacobian_route_and_the_dense_hessian() -> None:
    from wciaudit.curvature import ggn

    model = _Mixed().double().eval()
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(24, 2, 4, 4, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (24,), generator=g),
    )
    names = [layer.name for layer in weight_layers(model)]
    obj = Objective(model, x, y, names, 10, torch.device("cpu"))
    assert all(residual_vanishes(obj, seed=0).values())
    fast = {e.name: e.trace for e in ggn.ggn_traces(obj, memory_bytes=2**29, seed=0)}
    sums = ggn._Sums(torch.zeros(24, dtype=torch.long), 1, 24)
    ggn._ggn_by_jacobians(obj, names, sums, 2**26, None)
    exact = dense_traces(model, x, y, names)
    for n in names:
        assert fast[n] == pytest.approx(float(sums.totals[n][0]) / 24, rel=1e-9)
        assert fast[n] == pytest.approx(exact[n], rel=1e-6)


def test_vit_attention_layers_against_the_dense_hessian() -> None:
    """timm's fused attention has no double backward; the engine must still work, and
    the smooth layers must take Hutchinson, the head the exact route.

    timm's ``test_vit`` with one block of width 16 (of six of width 64): one attention
    block is all the fused-attention path needs, and the dense reference (one double
    backward per weight, through every block) falls from 1024 rows through six blocks to
    256 through one.
    """
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = (
        timm.create_model(
            "test_vit", num_classes=3, in_chans=1, img_size=8, patch_size=4, embed_dim=16, depth=1
        )
        .double()
        .eval()
    )
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(12, 1, 8, 8, generator=g, dtype=torch.float64), torch.arange(12) % 3
    names = ["patch_embed.proj.weight", "head.weight"]
    exact = dense_traces(model, x, y, names)
    est = {e.name: e for e in traces(model, x, y, names, method="auto", max_probes=100, seed=2)}
    assert est["patch_embed.proj.weight"].method == "hutchinson"
    assert (
        abs(est["patch_embed.proj.weight"].trace - exact["patch_embed.proj.weight"])
        < 4 * est["patch_embed.proj.weight"].se
    )
    assert est["head.weight"].method == "exact-ggn"
    assert est["head.weight"].trace == pytest.approx(exact["head.weight"], rel=1e-6)
