"""Where the WCI target's probes go, and whether the target can be met.

WCI = sum_k ||W_k||_F sqrt(max(Tr_k, 0)) has, with the layers independent, the
delta-method variance sum_k a_k^2 Var(Tr_k) (:func:`wciaudit.bounds.wci_term_se`). With
per-probe term variances a_k (each layer's term variance times its probe count), the
probe counts n_k that minimise sum_k n_k subject to sum_k a_k / n_k <= the variance
left to the open layers are n_k proportional to sqrt(a_k) (Lagrange):
:func:`allocate`. :func:`reachable` says whether any counts up to the cap can meet the
target, so that the rounds stop instead of spending probes in vain.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..bounds import wci_term_se, wci_terms, weight_curvature_index
from .estimate import TraceEstimate
from .growth import more_probes, short_of

__all__ = [
    "allocate",
    "by_count",
    "reachable",
    "term_var",
    "term_variance_at",
    "wci_relative_se",
    "wci_value",
]


def term_var(norm: float, e: TraceEstimate) -> float:
    """Var of a layer's WCI term (:func:`wciaudit.bounds.wci_term_se` squared)."""
    return wci_term_se(norm, e.trace, e.se) ** 2


def wci_value(norms: dict[str, float], estimates: dict[str, TraceEstimate]) -> float:
    """WCI of the estimates (each trace's term, 0 where the trace is not positive)."""
    return math.fsum(
        wci_terms([norms[n] for n in estimates], [e.trace for e in estimates.values()])
    )


def wci_relative_se(norms: dict[str, float], estimates: dict[str, TraceEstimate]) -> float:
    """Relative SE of WCI = sum_k ||W_k||_F sqrt(max(Tr_k, 0)), layers independent
    (:func:`wciaudit.bounds.weight_curvature_index`): Var(WCI) = sum_k a_k^2 Var(Tr_k),
    a_k the delta method's ||W_k||_F / (2 sqrt(Tr_k)) away from 0, and near or below 0
    the slope of a normal estimate's spread (:func:`wciaudit.bounds.term_slope`), so a
    trace near 0 neither stalls the rule (the delta method's slope grows without bound
    there) nor drops out of it."""
    wci, se = weight_curvature_index(
        [norms[n] for n in estimates],
        [e.trace for e in estimates.values()],
        [e.se for e in estimates.values()],
    )
    if wci == 0:
        return 0.0 if se == 0 else math.inf
    return se / wci


def term_variance_at(norm: float, e: TraceEstimate, probes: int) -> float:
    """Var of a Hutchinson layer's WCI term if it had ``probes`` probes: the probe part
    of its SE shrinks as 1 / sqrt(probes), the subset part stays, and the term's slope
    follows the SE (near 0 the variance shrinks only as 1 / sqrt(probes))."""
    per_probe = e.probe_se**2 * int(e.probes)
    se = math.sqrt(per_probe / max(probes, 1) + e.sample_se**2)
    return wci_term_se(norm, e.trace, se) ** 2


def reachable(
    norms: dict[str, float],
    fixed: dict[str, TraceEstimate],
    current: dict[str, TraceEstimate],
    tol: float,
    max_probes: int,
) -> bool:
    """Could the WCI reach relative SE ``tol`` with every open layer at ``max_probes``,
    were each open trace 2 SE above its estimate? Where it cannot (a WCI near 0 beside
    layers whose traces are near or below 0, whose terms stay noisy), further rounds
    are spent in vain. The traces are taken at the hopeful end because a trace
    underestimated near 0 has a steep WCI term (sqrt's slope) and would make a
    reachable target look hopeless on the noise of a few probes."""
    hope = {n: replace(e, trace=e.trace + 2 * e.se) for n, e in current.items()}
    wci = wci_value(norms, {**fixed, **hope})
    var = math.fsum(term_var(norms[n], e) for n, e in fixed.items())
    var += math.fsum(
        term_variance_at(norms[n], e, max(int(e.probes), max_probes)) for n, e in hope.items()
    )
    return var <= (tol * wci) ** 2


def allocate(
    norms: dict[str, float],
    fixed: dict[str, TraceEstimate],
    current: dict[str, TraceEstimate],
    tol: float,
    max_probes: int,
) -> dict[str, int]:
    """More probes per open Hutchinson layer (name -> count) for the next round: the
    counts that meet WCI's variance budget (tol * WCI)^2 with the fewest probes are
    proportional to sqrt(a_k), a_k the per-probe variance of the layer's WCI term
    (Lagrange; :func:`wciaudit.curvature.rounds.wci_rounds`), grown by
    :func:`wciaudit.curvature.growth.more_probes` and capped at ``max_probes``; empty
    when the budget is already spent by the fixed and capped layers."""
    wci = wci_value(norms, {**fixed, **current})
    budget = (tol * wci) ** 2 - math.fsum(term_var(norms[n], e) for n, e in fixed.items())
    # per-probe variance of each open layer's term: a_k^2 Var(Tr_k) n_k, its slope taken
    # 2 SE above the estimate: at the estimate a trace that came out low near 0 gets a
    # flat slope and no more probes, so the low estimates of such layers were kept and
    # the high ones pulled back, and the layer's estimates came out biased low
    a = {
        n: term_var(norms[n], replace(e, trace=e.trace + 2 * e.se)) * e.probes
        for n, e in current.items()
        if e.se > 0 and isinstance(e.probes, int) and e.probes < max_probes
    }
    a = {n: v for n, v in a.items() if v > 0}
    capped = math.fsum(term_var(norms[n], e) for n, e in current.items() if n not in a)
    budget -= capped
    if not a or budget <= 0:
        return {}  # the layers at their cap (or the fixed routes) already exceed the target
    root_sum = math.fsum(math.sqrt(v) for v in a.values())
    out = {}
    for n, v in a.items():
        have = int(current[n].probes)
        needed = math.sqrt(v) * root_sum / budget
        if short_of(have, needed):
            out[n] = more_probes(have, needed, max_probes)
    return out


def by_count(extra: dict[str, int]) -> dict[int, list[str]]:
    """Layers grouped by the probes they get, one Hutchinson call per group."""
    out: dict[int, list[str]] = {}
    for n, k in extra.items():
        out.setdefault(k, []).append(n)
    return out
