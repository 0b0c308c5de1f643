"""Every group's Hessian-vector product through one graph: zero per-group weight taps.

Hutchinson's grouped estimator (:mod:`.hutchinson`) needs q_g = v_g^T H_g v_g for each
group g of examples, with an independent probe v_g per group (H_g: the Hessian of
group g's share of the mean loss in one layer's weight W_k). One graph per group costs
G small backward passes per probe, and small batches waste most of a CPU's time.

A tap U_k of shape (G, *W_k.shape), all zeros, is added to the layer's weight per
example: example i of group g(i) is computed with W_k + U_{k,g(i)}. At U = 0 the
forward pass is the model's own; the loss depends on U_{k,g} only through group g's
examples, so

    d^2 L / dU_{k,g} dU_{k,h} = 0 (g != h),   = H_g (g = h),

and one Hessian-vector product with V = (v_1, ..., v_G) gives H_g v_g for every group
at once: q_g = (H_U V)_g . v_g. The graph of one batch (all groups) serves every
probe of every tapped layer; the products are taken as for one graph
(:class:`.hvp.BatchedHvp` with ``groups=True``).

A layer can be tapped when every use of its weight is a call of a Linear or
zero-padded Conv2d module (:func:`.ggn.hookable`) whose input has the examples on its
first axis; the others keep one graph per group.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .objective import Objective


def tappable(objective: Objective, modules: dict[str, list[nn.Module]]) -> list[str]:
    """Layers whose every module call sees the examples on the input's first axis
    (checked on a forward pass of 3 examples)."""
    rows = min(3, objective.n_local)
    seen: dict[str, bool] = dict.fromkeys(modules, True)
    owner = {id(m): n for n, ms in modules.items() for m in ms}

    def check(module: nn.Module, inputs: tuple) -> None:
        a = inputs[0] if inputs else None
        if not isinstance(a, torch.Tensor) or a.dim() < 2 or a.shape[0] != rows:
            seen[owner[id(module)]] = False

    handles = [m.register_forward_pre_hook(check) for ms in modules.values() for m in ms]
    try:
        with torch.no_grad():
            x = objective.x[:rows].to(objective.device, objective.dtype)
            objective.logits(objective.weights(requires_grad=False), x)
    finally:
        for h in handles:
            h.remove()
    return [n for n, ok in seen.items() if ok] if rows > 1 else []


class GroupTaps:
    """Zero taps on ``modules``' weights, one copy per group, for the graphs of
    :meth:`graphs`; ``taps[name]`` has shape (G, *weight.shape)."""

    def __init__(
        self,
        objective: Objective,
        modules: dict[str, list[nn.Module]],
        n_groups: int,
    ) -> None:
        self.objective = objective
        self.modules = modules
        params = dict(objective.model.named_parameters())
        self.taps = {
            n: torch.zeros(
                (n_groups, *params[n].shape),
                dtype=objective.dtype,
                device=objective.device,
                requires_grad=True,
            )
            for n in modules
        }
        self._owner = {id(m): n for n, ms in modules.items() for m in ms}
        self._slices: list[tuple[int, int, int]] = []

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        tap = self.taps[self._owner[id(module)]]
        a = inputs[0]
        parts = [_apply(module, a[s:e], tap[g]) for g, s, e in self._slices]
        return output + torch.cat(parts)

    def graphs(self, members: list[torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
        """Per batch of this process's examples (ordered by group), d L / dU per tapped
        layer, with its graph (``create_graph``)."""
        o = self.objective
        order = torch.cat(members) if members else torch.zeros(0, dtype=torch.long)
        group_of = torch.cat(
            [torch.full((len(m),), g, dtype=torch.long) for g, m in enumerate(members)]
        )
        weights = o.weights(requires_grad=False)
        names = list(self.taps)
        handles = [m.register_forward_hook(self._hook) for ms in self.modules.values() for m in ms]
        try:
            for i in range(0, order.shape[0], o.batch_size):
                rows, groups = order[i : i + o.batch_size], group_of[i : i + o.batch_size]
                self._slices = _runs(groups)
                xb = o.x[rows].to(o.device, o.dtype)
                yb = o.y[rows].to(o.device)
                loss = o.loss(weights, xb, yb)
                grads = torch.autograd.grad(
                    loss, [self.taps[n] for n in names], create_graph=True, allow_unused=True
                )
                yield {
                    n: (torch.zeros_like(self.taps[n]) if g is None else g)
                    for n, g in zip(names, grads, strict=True)
                }
                # this batch's graph goes before the next is built: one graph at a time
                del loss, grads
        finally:
            for h in handles:
                h.remove()
            self._slices = []


def _apply(module: nn.Module, a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The module's operation with ``weight`` and no bias."""
    if isinstance(module, nn.Linear):
        return F.linear(a, weight)
    return F.conv2d(a, weight, None, module.stride, module.padding, module.dilation, module.groups)


def _runs(groups: torch.Tensor) -> list[tuple[int, int, int]]:
    """(group, start, stop) of each run of equal group ids in a batch sorted by group."""
    if groups.numel() == 0:
        return []
    values, counts = torch.unique_consecutive(groups, return_counts=True)
    out, start = [], 0
    for g, c in zip(values.tolist(), counts.tolist(), strict=True):
        out.append((g, start, start + c))
        start += c
    return out
