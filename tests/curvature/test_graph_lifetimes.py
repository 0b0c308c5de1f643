"""No estimator keeps one batch's autograd graph alive while it builds the next.

Peak memory is one graph, not two: on a GPU the second graph is what runs out of
memory. Every tensor autograd saves for backward is boxed by a saved-tensors hook; a
box lives exactly as long as the graph that saved it. At each forward pass of the
model the boxes of earlier forward passes must all be gone.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from reference import cnn_bn, mlp
from torch import nn

from wciaudit.curvature.ggn import ggn_traces
from wciaudit.curvature.hutchinson import hutchinson_traces
from wciaudit.curvature.mc_ggn import mc_ggn_traces
from wciaudit.curvature.objective import Objective


class _Box:
    """One saved tensor and the forward pass that saved it."""

    def __init__(self, tensor: torch.Tensor, forward: int) -> None:
        self.tensor, self.forward = tensor, forward


class GraphWatch:
    """Counts, at each forward pass of ``model``, the saved tensors of earlier passes
    that are still alive (``stale``: one count per forward pass)."""

    def __init__(self, model: nn.Module) -> None:
        self.forward = 0
        self.live: weakref.WeakSet[_Box] = weakref.WeakSet()
        self.stale: list[int] = []
        self.handle = model.register_forward_pre_hook(self._pre)

    def _pre(self, module: nn.Module, inputs: tuple) -> None:
        self.forward += 1
        self.stale.append(sum(1 for b in self.live if b.forward < self.forward))

    def pack(self, t: torch.Tensor) -> _Box:
        # detached: a box holding an output would hold its grad_fn, which holds the box
        # (a cycle through C++ that no collector sees); autograd restores the metadata
        box = _Box(t.detach(), self.forward)
        self.live.add(box)
        return box

    @staticmethod
    def unpack(box: _Box) -> torch.Tensor:
        return box.tensor


def _watched(model: nn.Module, run) -> list[int]:  # noqa: ANN001
    watch = GraphWatch(model)
    try:
        with torch.autograd.graph.saved_tensors_hooks(watch.pack, watch.unpack):
            run()
    finally:
        watch.handle.remove()
    assert len(watch.stale) > 3  # several batches were measured
    return watch.stale


def _data(n: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_hutchinson_frees_each_batch_graph(net: str) -> None:
    # the MLP's layers take zero taps (one graph for all groups), the CNN's convolutions
    # after BatchNorm and pooling too; a Tanh MLP keeps Hutchinson on its own route
    model = mlp(nn.Tanh) if net == "mlp" else cnn_bn()
    x, y = _data(24, (12,) if net == "mlp" else (1, 4, 4))
    names = [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2]
    obj = Objective(model, x, y, names, 4, torch.device("cpu"))
    stale = _watched(
        model,
        lambda: hutchinson_traces(obj, tol=1e-9, max_probes=4, min_probes=2, groups=2, seed=0),
    )
    assert max(stale) == 0, stale


def test_hutchinson_per_group_graphs_are_freed() -> None:
    # groups=1: no taps, one graph per batch through _PerGroup
    model = mlp(nn.Tanh)
    x, y = _data(20, (12,))
    obj = Objective(model, x, y, ["1.weight", "5.weight"], 4, torch.device("cpu"))
    stale = _watched(
        model,
        lambda: hutchinson_traces(obj, tol=1e-9, max_probes=3, min_probes=2, groups=1, seed=0),
    )
    assert max(stale) == 0, stale


@pytest.mark.parametrize("route", ["ggn", "mc-ggn"])
def test_gauss_newton_routes_free_each_batch_graph(route: str) -> None:
    model = cnn_bn()
    x, y = _data(20, (1, 4, 4))
    names = ["0.weight", "4.weight", "8.weight"]
    obj = Objective(model, x, y, names, 4, torch.device("cpu"))
    if route == "ggn":
        stale = _watched(model, lambda: ggn_traces(obj, memory_bytes=2**29, seed=0))
    else:
        stale = _watched(
            model,
            lambda: mc_ggn_traces(
                obj, k_labels=2, max_labels=2, tol=1e-9, seed=0, memory_bytes=2**29
            ),
        )
    assert max(stale) == 0, stale
