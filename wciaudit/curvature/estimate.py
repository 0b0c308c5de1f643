"""Per-layer trace estimates: value, standard error, probe count, how the estimate stopped."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TraceEstimate:
    """Tr(H_kk) for one layer (SPEC: Layers, norms, curvature).

    Attributes:
        name: parameter name of the layer.
        trace: the estimate (exact for ``exact-ggn``).
        se: standard error (0 for exact).
        probes: Rademacher probes averaged, or ``"exact"``.
        method: ``hutchinson`` or ``exact-ggn``.
        converged: relative SE <= tol (or exact).
        stop_reason: ``exact``, ``tol``, ``cap`` or ``subset`` (probe part within tol,
            the subset part alone above it).
        history: [probes, running mean, running SE] after each round.
        probe_se: the part of ``se`` from random probes or sampled labels.
        sample_se: the part of ``se`` from drawing the Hessian subset out of the split
            (finite-population factor applied; 0 when the subset is the whole split).
        se_covers: the sources of variation ``se`` covers, e.g. ``("probes",
            "hessian-subset")``.
        route_reason: why this layer took its route.
        group_shares: each group's share of ``trace`` (they sum to it), over the groups
            of :func:`~wciaudit.curvature.groups.probe_groups`; two runs on the same
            examples with the same seed are paired group by group.
    """

    name: str
    trace: float
    se: float
    probes: int | str
    method: str
    converged: bool
    stop_reason: str
    history: list[list[float]] = field(default_factory=list)
    probe_se: float = 0.0
    sample_se: float = 0.0
    se_covers: tuple[str, ...] = ()
    route_reason: str = ""
    group_shares: tuple[float, ...] = ()

    @property
    def rel_se(self) -> float | None:
        if self.trace == 0:
            return None if self.se == 0 else math.inf
        return self.se / abs(self.trace)
