"""Per-layer traces of the adversarial-loss Hessian: route choice and the two estimators.

``layer_traces`` measures Tr(H_kk) for every layer k:
- ``exact-ggn`` (:mod:`.ggn`) where the residual of the Gauss-Newton split is zero on
  the data (checked per layer) and the C Jacobian rows per example fit in memory and
  cost less than the probes Hutchinson would spend;
- ``hutchinson`` (:mod:`.hutchinson`) elsewhere, with block-restricted probes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .estimate import TraceEstimate, mean_and_se
from .ggn import ggn_bytes_per_example, ggn_traces, hookable, residual_vanishes
from .hutchinson import hutchinson_traces
from .objective import Objective

__all__ = [
    "Objective",
    "TraceEstimate",
    "layer_traces",
    "ggn_traces",
    "hutchinson_traces",
    "residual_vanishes",
    "mean_and_se",
]


def layer_traces(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    names: list[str],
    *,
    method: str = "auto",
    tol: float = 0.05,
    max_probes: int = 200,
    min_probes: int = 10,
    seed: int = 0,
    batch_size: int = 128,
    device: torch.device | None = None,
    memory_bytes: int = 512 * 2**20,
    progress: Callable[[str, int], None] | None = None,
    n_total: int | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    n_population: int | None = None,
) -> list[TraceEstimate]:
    """Tr(d^2 L / dW_k^2) for each named layer, L = mean CE of ``model`` on (x, y).

    Args:
        model: classifier in eval mode, on ``device``.
        x, y: the (adversarial) examples the Hessian is taken over, on the CPU.
        names: layer parameter names, in model order.
        method: ``auto`` (exact route where it is exact and cheaper), ``ggn`` (exact
            route wherever it is exact), ``hutchinson`` (probes everywhere).
        tol, max_probes, min_probes, seed: Hutchinson's stop rule and probes.
        memory_bytes: budget for one chunk of per-example Jacobians.
        progress: called as ``progress(kind, n)`` with kind ``"ggn"`` (examples) or
            ``"probes"``.
        n_total, reduce: under torch.distributed, (x, y) is this process's shard of
            ``n_total`` examples and ``reduce`` sums a tensor over processes.
        n_population: size of the split (x, y) was sampled from; the SE then covers
            the choice of subset, with the finite-population factor.

    Returns:
        One estimate per layer, in the order of ``names``.
    """
    # fused attention kernels (flash / memory-efficient SDPA) have no double backward;
    # the math kernel computes the same attention and differentiates twice
    with sdpa_kernel([SDPBackend.MATH]):
        return _layer_traces(
            model, x, y, names, method=method, tol=tol, max_probes=max_probes, min_probes=min_probes,
            seed=seed, batch_size=batch_size, device=device, memory_bytes=memory_bytes,
            progress=progress, n_total=n_total, reduce=reduce, n_population=n_population,
        )


def _layer_traces(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    names: list[str],
    *,
    method: str,
    tol: float,
    max_probes: int,
    min_probes: int,
    seed: int,
    batch_size: int,
    device: torch.device | None,
    memory_bytes: int,
    progress: Callable[[str, int], None] | None,
    n_total: int | None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None,
    n_population: int | None = None,
) -> list[TraceEstimate]:
    device = device or next(model.parameters()).device
    objective = Objective(
        model, x, y, list(names), batch_size, device, n_total=n_total, n_population=n_population
    )
    if reduce is not None:
        objective.reduce = reduce
    estimates: dict[str, TraceEstimate] = {}
    hutch_names = list(names)
    if method in ("auto", "ggn"):
        exact = residual_vanishes(objective, seed=seed)
        candidates = [n for n in names if exact[n]]
        fast = set(hookable(objective, candidates))
        classes = _num_classes(objective)
        # Linear/Conv2d layers share one set of C + 1 backward passes; other layers need
        # per-example Jacobians, grouped to fit the memory budget, C products per group
        groups = ([[n for n in candidates if n in fast]] if fast else []) + _memory_groups(
            objective, [n for n in candidates if n not in fast], classes, memory_bytes
        )
        # cost in backward passes over the data: C (+1) per group for the exact route,
        # >= 2 * min_probes Hessian-vector products per layer for Hutchinson
        ggn_cost = (classes + 1) * len(groups)
        hutch_cost = 2 * min_probes * sum(len(g) for g in groups)
        if groups and (method == "ggn" or ggn_cost <= hutch_cost):
            for group in groups:
                for est in ggn_traces(
                    objective, group, memory_bytes=memory_bytes, seed=seed,
                    progress=None if progress is None else (lambda k: progress("ggn", k)),
                ):
                    estimates[est.name] = est
            hutch_names = [n for n in names if n not in estimates]
    if hutch_names:
        for est in hutchinson_traces(
            objective, tol=tol, max_probes=max_probes, min_probes=min_probes, seed=seed,
            names=hutch_names,
            progress=None if progress is None else (lambda k: progress("probes", k)),
        ):
            estimates[est.name] = est
    return [estimates[n] for n in names]


def _num_classes(objective: Objective) -> int:
    with torch.no_grad():
        xb = objective.x[:1].to(objective.device, objective.dtype)
        return int(objective.model(xb).shape[1])


def _memory_groups(objective: Objective, names: list[str], classes: int, memory_bytes: int) -> list[list[str]]:
    """Split layers into groups whose per-example Jacobian fits ``memory_bytes``;
    a layer that alone does not fit is left to Hutchinson."""
    groups: list[list[str]] = []
    current: list[str] = []
    for n in names:
        if ggn_bytes_per_example(objective, [n], classes) > memory_bytes:
            continue
        if current and ggn_bytes_per_example(objective, current + [n], classes) > memory_bytes:
            groups.append(current)
            current = []
        current.append(n)
    if current:
        groups.append(current)
    return groups
