"""Per-layer traces of the adversarial-loss Hessian: the public surface and the dispatch.

``layer_traces`` measures Tr(H_kk) for every layer k, on the route
:func:`.route.choose_routes` picks by expected cost:
- ``exact-ggn`` (:mod:`.ggn`) where the residual of the Gauss-Newton split is zero on
  the data (checked per layer) and C backward passes are the cheapest;
- ``mc-ggn`` (:mod:`.mc_ggn`) where the residual is zero and sampled labels are cheaper
  (many classes);
- ``hutchinson`` (:mod:`.hutchinson`) elsewhere, with block-restricted probes;
- ``hutch++`` (:mod:`.hutchpp`) only where asked for (``curvature="hutchpp"``).

The tolerance applies per layer, or, given the layers' weight norms, to the WCI:
Hutchinson probes then go where they cut WCI's variance most (:mod:`.rounds`). The
settings come from one :class:`wciaudit.config.ScanConfig`; the caller builds the
:class:`.Objective`.

The pieces, one idea per module: the operator a route applies (:mod:`.objective`, the
loss and its examples; :mod:`.hvp`, Hessian-vector products through
:mod:`.probe_graphs` and :mod:`.taps`; :mod:`.ggn` and :mod:`.mc_ggn`, the exact and
sampled Gauss-Newton blocks), the estimators over it (:mod:`.hutchinson`,
:mod:`.hutchpp`, the exact trace of :mod:`.ggn`), and what they share: the growth rule
(:mod:`.growth`), the SE family (:mod:`.standard_errors`), the example groups
(:mod:`.groups`), pooling (:mod:`.pooling`) and the WCI budget (:mod:`.allocation`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import ScanConfig
from ..model import no_tf32
from .estimate import TraceEstimate
from .ggn import ggn_traces, hookable, residual_vanishes
from .hutchinson import hutchinson_traces
from .hutchpp import hutchpp_traces
from .mc_ggn import mc_ggn_traces
from .objective import Objective
from .pooling import pool
from .rounds import mark_wci_stop, wci_rounds
from .route import Route, choose_routes, memory_groups
from .standard_errors import mean_and_se

__all__ = [
    "Objective",
    "TraceEstimate",
    "layer_traces",
    "ggn_traces",
    "hutchinson_traces",
    "hutchpp_traces",
    "mc_ggn_traces",
    "choose_routes",
    "Route",
    "pool",
    "residual_vanishes",
    "mean_and_se",
]


def layer_traces(
    objective: Objective,
    config: ScanConfig,
    *,
    weight_norms: Sequence[float] | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> list[TraceEstimate]:
    """Tr(d^2 L / dW_k^2) for each layer of ``objective.names``, L = mean CE on (x, y).

    Args:
        objective: model (in eval mode, on ``objective.device``), the fixed examples,
            the layers, and, under torch.distributed, this process's shard of them.
        config: the scan's settings; read here: ``curvature`` (the route: ``auto``,
            ``ggn``, ``mc-ggn``, ``hutchinson``, ``hutchpp``; :func:`.route.choose_routes`), ``tol``,
            ``layer_tol``, ``max_probes``, ``min_probes``, ``seed``, ``memory_bytes``
            (one chunk of per-example Jacobians) and ``k_labels`` (``mc-ggn``).
        weight_norms: ||W_k||_F per layer (order of ``objective.names``). Given, the
            target is the WCI: stop when WCI = sum_k ||W_k||_F sqrt(Tr_k) has relative
            SE <= ``tol`` (delta method, as :func:`wciaudit.bounds.weight_curvature_index`),
            giving further Hutchinson probes to the layers whose variance they cut most
            per probe, and holding each Hutchinson layer to ``layer_tol`` when that is
            set. Absent, every layer to relative SE ``tol``.
        progress: called as ``progress(kind, n)`` with kind ``"ggn"`` (examples) or
            ``"probes"``.

    Returns:
        One estimate per layer, in the order of ``objective.names``; ``method`` is the
        route taken and ``route_reason`` says why.
    """
    names = list(objective.names)
    norms = None if weight_norms is None else [float(w) for w in weight_norms]
    if norms is not None and len(norms) != len(names):
        raise ValueError(
            f"weight_norms needs one norm per layer: {len(norms)} norms, {len(names)} layers"
        )
    # fused attention kernels (flash / memory-efficient SDPA) have no double backward;
    # the math kernel computes the same attention and differentiates twice
    # and TF32 off: cuDNN's default convolutions round to ~1e-3 (:func:`..model.no_tf32`)
    with sdpa_kernel([SDPBackend.MATH]), no_tf32():
        return _layer_traces(objective, names, config, norms, progress)


def _layer_traces(
    objective: Objective,
    names: list[str],
    config: ScanConfig,
    norms: list[float] | None,
    progress: Callable[[str, int], None] | None,
) -> list[TraceEstimate]:
    classes = _num_classes(objective)
    routes = {
        r.name: r
        for r in choose_routes(
            objective,
            names,
            method=config.curvature.value,
            min_probes=config.min_probes,
            max_probes=config.max_probes,
            memory_bytes=config.memory_bytes,
            classes=classes,
            k_labels=config.k_labels,
            tol=config.tol,
            seed=config.seed,
        )
    }
    plan = _Plan(
        objective,
        config,
        classes,
        progress,
        norms=None if norms is None else dict(zip(names, norms, strict=True)),
    )
    estimates: dict[str, TraceEstimate] = {}
    # in this order: the WCI rounds read the estimates of the routes before them
    for route, estimator in _ESTIMATORS.items():
        layers = [n for n in names if routes[n].route == route]
        if layers:
            estimates.update((e.name, e) for e in estimator(plan, layers, dict(estimates)))
    if norms is not None:
        mark_wci_stop(estimates, plan.norms, config.tol)
    for n in names:
        estimates[n].method = routes[n].route
        # why the route, then how the estimator served the layer (e.g. tied weights)
        how = estimates[n].route_reason
        estimates[n].route_reason = f"{routes[n].reason}; {how}" if how else routes[n].reason
    return [estimates[n] for n in names]


@dataclass(frozen=True)
class _Plan:
    """What every estimator reads: the objective, the settings, C, the progress hook
    and, under the WCI target, each layer's weight norm."""

    objective: Objective
    config: ScanConfig
    classes: int
    progress: Callable[[str, int], None] | None
    norms: dict[str, float] | None

    def tick(self, kind: str) -> Callable[[int], None] | None:
        progress = self.progress
        return None if progress is None else (lambda k: progress(kind, k))


def _exact_ggn(plan: _Plan, layers: list[str], _done: dict) -> list[TraceEstimate]:
    """The exact trace of the Gauss-Newton block, per memory group of layers."""
    objective, config = plan.objective, plan.config
    fast = hookable(objective, layers)
    groups = ([fast] if fast else []) + memory_groups(
        objective, [n for n in layers if n not in fast], plan.classes, config.memory_bytes
    )
    out: list[TraceEstimate] = []
    for group in groups:
        out += ggn_traces(
            objective,
            group,
            memory_bytes=config.memory_bytes,
            progress=plan.tick("ggn"),
            seed=config.seed,
        )
    return out


def _mc_ggn(plan: _Plan, layers: list[str], _done: dict) -> list[TraceEstimate]:
    """The sampled-label Gauss-Newton trace, labels shared by the layers."""
    config = plan.config
    return mc_ggn_traces(
        plan.objective,
        layers,
        k_labels=config.k_labels,
        seed=config.seed,
        # labels are shared by all layers and cheap: each layer to tol keeps each
        # WCI term within tol / 2, leaving most of the WCI's budget to the probes
        tol=config.tol,
        max_labels=max(config.k_labels, config.max_probes),
        memory_bytes=config.memory_bytes,
        progress=plan.tick("ggn"),
    )


def _hutchpp(plan: _Plan, layers: list[str], _done: dict) -> list[TraceEstimate]:
    """Hutch++ on each layer to ``tol`` (its WCI term then within tol / 2)."""
    config = plan.config
    return hutchpp_traces(
        plan.objective,
        layers,
        tol=config.tol,
        min_probes=config.min_probes,
        max_probes=config.max_probes,
        seed=config.seed,
    )


def _hutchinson(plan: _Plan, layers: list[str], done: dict) -> list[TraceEstimate]:
    """Hutchinson, each layer to ``tol`` or, with the layers' norms, until WCI is
    (the layers of the routes before, ``done``, fixed in the WCI's budget)."""
    config = plan.config
    if plan.norms is None:
        return hutchinson_traces(
            plan.objective,
            tol=config.tol,
            max_probes=config.max_probes,
            min_probes=config.min_probes,
            seed=config.seed,
            names=layers,
            progress=plan.tick("probes"),
        )
    rounds = wci_rounds(
        plan.objective,
        layers,
        done,
        plan.norms,
        tol=config.tol,
        layer_tol=config.layer_tol,
        min_probes=config.min_probes,
        max_probes=config.max_probes,
        seed=config.seed,
        progress=plan.tick("probes"),
    )
    return list(rounds.values())


#: the estimator of each route, in the order they run
_ESTIMATORS: dict[str, Callable[[_Plan, list[str], dict], list[TraceEstimate]]] = {
    "exact-ggn": _exact_ggn,
    "mc-ggn": _mc_ggn,
    "hutch++": _hutchpp,
    "hutchinson": _hutchinson,
}


def _num_classes(objective: Objective) -> int:
    with torch.no_grad():
        xb = objective.x[:1].to(objective.device, objective.dtype)
        return int(objective.model(xb).shape[1])
