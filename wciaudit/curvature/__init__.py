"""Per-layer traces of the adversarial-loss Hessian: the public surface and the dispatch.

``layer_traces`` measures Tr(H_kk) for every layer k, on the route
:func:`.route.choose_routes` picks by expected cost:
- ``exact-ggn`` (:mod:`.ggn`) where the residual of the Gauss-Newton split is zero on
  the data (checked per layer) and C backward passes are the cheapest;
- ``mc-ggn`` (:mod:`.mc_ggn`) where the residual is zero and sampled labels are cheaper
  (many classes);
- ``hutchinson`` (:mod:`.hutchinson`) elsewhere, with block-restricted probes.

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

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import ScanConfig
from ..model import no_tf32
from .estimate import TraceEstimate
from .ggn import ggn_traces, hookable, residual_vanishes
from .hutchinson import hutchinson_traces
from .mc_ggn import mc_ggn_traces
from .objective import Objective
from .pooling import pool
from .rounds import mark_wci_stop, wci_rounds
from .route import ROUTES, Route, choose_routes, memory_groups
from .standard_errors import mean_and_se

__all__ = [
    "Objective",
    "TraceEstimate",
    "layer_traces",
    "ggn_traces",
    "hutchinson_traces",
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
            ``ggn``, ``mc-ggn``, ``hutchinson``; :func:`.route.choose_routes`), ``tol``,
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


def _tick(progress: Callable[[str, int], None] | None, kind: str) -> Callable[[int], None] | None:
    return None if progress is None else (lambda k: progress(kind, k))


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
    by_route = {kind: [n for n in names if routes[n].route == kind] for kind in ROUTES}
    estimates: dict[str, TraceEstimate] = {}
    _gauss_newton(objective, by_route, classes, estimates, config, progress)
    _probes(objective, names, by_route["hutchinson"], estimates, config, norms, progress)
    if norms is not None:
        mark_wci_stop(estimates, dict(zip(names, norms, strict=True)), config.tol)
    for n in names:
        estimates[n].method = routes[n].route
        # why the route, then how the estimator served the layer (e.g. tied weights)
        how = estimates[n].route_reason
        estimates[n].route_reason = f"{routes[n].reason}; {how}" if how else routes[n].reason
    return [estimates[n] for n in names]


def _gauss_newton(
    objective: Objective,
    by_route: dict[str, list[str]],
    classes: int,
    estimates: dict[str, TraceEstimate],
    config: ScanConfig,
    progress: Callable[[str, int], None] | None,
) -> None:
    """The exact and the sampled-label Gauss-Newton layers, into ``estimates``."""
    exact = by_route["exact-ggn"]
    if exact:
        fast = hookable(objective, exact)
        groups = ([fast] if fast else []) + memory_groups(
            objective, [n for n in exact if n not in fast], classes, config.memory_bytes
        )
        for group in groups:
            for est in ggn_traces(
                objective,
                group,
                memory_bytes=config.memory_bytes,
                progress=_tick(progress, "ggn"),
                seed=config.seed,
            ):
                estimates[est.name] = est
    if by_route["mc-ggn"]:
        for est in mc_ggn_traces(
            objective,
            by_route["mc-ggn"],
            k_labels=config.k_labels,
            seed=config.seed,
            # labels are shared by all layers and cheap: each layer to tol keeps each
            # WCI term within tol / 2, leaving most of the WCI's budget to the probes
            tol=config.tol,
            max_labels=max(config.k_labels, config.max_probes),
            memory_bytes=config.memory_bytes,
            progress=_tick(progress, "ggn"),
        ):
            estimates[est.name] = est


def _probes(
    objective: Objective,
    names: list[str],
    hutch: list[str],
    estimates: dict[str, TraceEstimate],
    config: ScanConfig,
    weight_norms: list[float] | None,
    progress: Callable[[str, int], None] | None,
) -> None:
    """The Hutchinson layers, each to ``tol`` or, with the layers' norms, until WCI is."""
    if not hutch:
        return
    if weight_norms is None:
        for est in hutchinson_traces(
            objective,
            tol=config.tol,
            max_probes=config.max_probes,
            min_probes=config.min_probes,
            seed=config.seed,
            names=hutch,
            progress=_tick(progress, "probes"),
        ):
            estimates[est.name] = est
        return
    norms = dict(zip(names, weight_norms, strict=True))
    estimates.update(
        wci_rounds(
            objective,
            hutch,
            estimates,
            norms,
            tol=config.tol,
            layer_tol=config.layer_tol,
            min_probes=config.min_probes,
            max_probes=config.max_probes,
            seed=config.seed,
            progress=_tick(progress, "probes"),
        )
    )


def _num_classes(objective: Objective) -> int:
    with torch.no_grad():
        xb = objective.x[:1].to(objective.device, objective.dtype)
        return int(objective.model(xb).shape[1])
