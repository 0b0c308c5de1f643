"""Zero per-group weight taps: every group's Hessian-vector product through one graph.

Ground truth: the dense float64 Hessian of each group's share of the mean loss, and
the one-graph-per-group path the taps replace (same probes, so the same values).
"""

from __future__ import annotations

import pytest
import torch
from reference import dense_block
from torch import nn

from wciaudit.curvature import probe_graphs
from wciaudit.curvature.ggn import weight_modules
from wciaudit.curvature.hutchinson import hutchinson_traces
from wciaudit.curvature.hvp import BatchedHvp
from wciaudit.curvature.objective import Objective
from wciaudit.curvature.taps import GroupTaps, tappable


class _Tokens(nn.Module):
    """Conv stem, depthwise conv, GELU, then a Linear over tokens and a head: layers
    with smooth curvature, a grouped convolution and a Linear on (N, T, C) inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.mix = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.gelu(self.dw(torch.tanh(self.stem(x))))
        tokens = h.flatten(2).transpose(1, 2)  # (N, T, C)
        return self.head(torch.tanh(self.mix(tokens)).mean(1))


class _FlatTokens(_Tokens):
    """The same, but the token Linear sees (N * T, C): examples are not its first axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.gelu(self.dw(torch.tanh(self.stem(x))))
        n = h.shape[0]
        tokens = h.flatten(2).transpose(1, 2).reshape(-1, 4)
        return self.head(torch.tanh(self.mix(tokens)).reshape(n, -1, 5).mean(1))


def _data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 2, 4, 4, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


NAMES = ["stem.weight", "dw.weight", "mix.weight", "head.weight"]


def test_each_groups_product_equals_its_dense_hessian() -> None:
    torch.manual_seed(0)
    net = _Tokens().double().eval()
    x, y = _data()
    members = [torch.tensor([0, 5, 7]), torch.tensor([1, 2, 9, 11]), torch.tensor([3, 4, 6, 8, 10])]
    obj = Objective(net, x, y, NAMES, batch_size=5, device=torch.device("cpu"))
    modules = weight_modules(obj, NAMES)
    assert tappable(obj, modules) == NAMES
    taps = GroupTaps(obj, modules, len(members))
    g = torch.Generator().manual_seed(1)
    probes = {
        n: torch.randn(3, 2, *taps.taps[n].shape[1:], generator=g, dtype=torch.float64)
        for n in NAMES
    }
    # batch size 5 splits groups across batches: each batch adds its share
    got = {n: torch.zeros(3, 2, dtype=torch.float64) for n in NAMES}
    for grads in taps.graphs(members):
        for n in NAMES:
            # all probes through the graph at once, and one product per probe
            stacked = probes[n].transpose(0, 1)
            hvp = BatchedHvp()
            got[n] += hvp(n, grads[n], taps.taps[n], stacked, groups=True).t() / 2
            got[n] += hvp._loop(grads[n], taps.taps[n], stacked, 2).t() / 2
    for n in NAMES:
        for gi, rows in enumerate(members):
            # H_g: the Hessian of group g's share of the mean loss over all 12 examples
            block = dense_block(net, x[rows], y[rows], n) * len(rows) / x.shape[0]
            for j in range(2):
                v = probes[n][gi, j].reshape(-1)
                assert float(got[n][gi, j]) == pytest.approx(
                    float(v @ block @ v), rel=1e-10, abs=1e-13
                )


def test_taps_give_the_per_group_graphs_values(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = _Tokens().double().eval()
    x, y = _data(40)
    obj = Objective(net, x, y, NAMES, batch_size=16, device=torch.device("cpu"), n_population=400)

    def run() -> list:
        return hutchinson_traces(obj, tol=0.01, max_probes=12, min_probes=4, seed=5)

    tapped = run()
    monkeypatch.setattr(probe_graphs, "tappable", lambda objective, modules: [])
    per_group = run()
    for a, b in zip(tapped, per_group, strict=True):
        assert a.probes == b.probes
        assert a.trace == pytest.approx(b.trace, rel=1e-10)
        assert a.se == pytest.approx(b.se, rel=1e-10)
        assert a.group_shares == pytest.approx(b.group_shares, rel=1e-10)


def test_a_layer_whose_input_mixes_examples_is_not_tapped() -> None:
    torch.manual_seed(0)
    net = _FlatTokens().double().eval()
    x, y = _data()
    obj = Objective(net, x, y, NAMES, batch_size=12, device=torch.device("cpu"))
    assert tappable(obj, weight_modules(obj, NAMES)) == ["stem.weight", "dw.weight", "head.weight"]
