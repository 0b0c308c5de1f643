"""Hessian-vector products through one double-backward graph: the one implementation
Hutchinson (:mod:`.hutchinson`, quadratic forms v^T H_kk v) and Hutch++
(:mod:`.hutchpp`, products H_kk v) share.

Given a layer's gradient ``grad_k`` with its graph (``create_graph=True``) and the
weight (or zero tap, :mod:`.taps`) it was taken with respect to, H_kk v is one more
backward pass with ``v`` as the output gradient. Two ways give the same values: all
directions at once (``is_grads_batched``, a vmap over the backward) or one product per
direction. Batching pays for Linear weights and on GPUs; on a CPU the batched
convolution backward measured 2-3x slower than the loop (benchmarks/trace_speed.py),
so there convolutions loop. The rule depends on the layer and device only, never on
timings, so runs stay repeatable; an op without a vmap batching rule turns batching
off for the rest of the run.
"""

from __future__ import annotations

import torch

from ..retry import is_out_of_memory

__all__ = ["BatchedHvp"]


class BatchedHvp:
    """H_kk v (:meth:`products`) or v^T H_kk v (``__call__``) for a stack of directions.

    With ``groups`` the weight is a zero tap (G, *shape) (:mod:`.taps`) and the
    directions (p, G, *shape) hold one vector per group: the quadratic forms are then
    (p, G), one per group.
    """

    def __init__(self) -> None:
        self.batched_ok = True

    def __call__(
        self,
        name: str,
        grad_k: torch.Tensor,
        weight_k: torch.Tensor,
        probes: torch.Tensor,
        groups: bool = False,
    ) -> torch.Tensor:
        """v^T H_kk v per direction (per group with ``groups``), float64 on the CPU."""
        lead = 2 if groups else 1  # leading axes kept: probes, and groups
        if not grad_k.requires_grad:  # the loss does not reach this layer's weight
            return torch.zeros(probes.shape[:lead], dtype=torch.float64)
        if self._batches(weight_k, probes, lead):
            hv = self._batched(grad_k, weight_k, probes)
            if hv is not None:
                if isinstance(hv, int):
                    return torch.zeros(probes.shape[:lead], dtype=torch.float64)
                return (hv * probes).flatten(lead).sum(lead).double().cpu()
        return self._loop(grad_k, weight_k, probes, lead)

    @classmethod
    def _loop(
        cls, grad_k: torch.Tensor, weight_k: torch.Tensor, probes: torch.Tensor, lead: int
    ) -> torch.Tensor:
        """The quadratic forms one product at a time."""
        out = []
        for v in probes:
            hv = cls._one(grad_k, weight_k, v)
            if hv is None:
                out.append(torch.zeros(probes.shape[1:lead], dtype=torch.float64))
            else:
                out.append((hv * v).flatten(lead - 1).sum(-1).double().cpu())
        return torch.stack(out)

    def products(
        self, grad_k: torch.Tensor, weight_k: torch.Tensor, directions: torch.Tensor
    ) -> torch.Tensor:
        """H_kk v for each direction of ``directions`` (m, *shape), in the model's dtype
        on its device (zeros where the loss does not reach the weight)."""
        if not grad_k.requires_grad:
            return torch.zeros_like(directions)
        if self._batches(weight_k, directions, 1):
            hv = self._batched(grad_k, weight_k, directions)
            if hv is not None:
                return torch.zeros_like(directions) if isinstance(hv, int) else hv
        out = []
        for v in directions:
            hv = self._one(grad_k, weight_k, v)
            out.append(torch.zeros_like(v) if hv is None else hv)
        return torch.stack(out)

    def _batches(self, weight_k: torch.Tensor, probes: torch.Tensor, lead: int) -> bool:
        linear = weight_k.dim() - (lead - 1) == 2
        return (
            self.batched_ok and probes.shape[0] > 1 and (linear or weight_k.device.type == "cuda")
        )

    def _batched(
        self, grad_k: torch.Tensor, weight_k: torch.Tensor, probes: torch.Tensor
    ) -> torch.Tensor | int | None:
        """All products at once; None where batching failed (the loop takes over), 0
        where the weight is unused."""
        try:
            (hv,) = torch.autograd.grad(
                grad_k,
                weight_k,
                grad_outputs=probes,
                is_grads_batched=True,
                retain_graph=True,
                allow_unused=True,
            )
        except RuntimeError as exc:
            if is_out_of_memory(exc):
                raise  # the batch-size retry's to handle, not a missing batching rule
            # an op without a vmap batching rule: one product per probe from now on
            self.batched_ok = False
            return None
        return 0 if hv is None else hv

    @staticmethod
    def _one(grad_k: torch.Tensor, weight_k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
        (hv,) = torch.autograd.grad(
            grad_k, weight_k, grad_outputs=v, retain_graph=True, allow_unused=True
        )
        return hv
