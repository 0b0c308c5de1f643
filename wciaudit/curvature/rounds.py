"""The WCI-targeted rounds of Hutchinson probes: first look, top-up, cautious stop.

With the layers' weight norms, the tolerance applies to WCI rather than to each layer
(:func:`wci_rounds`): a first look of one probe per group spares the layers whose
traces lie far below 0, every other layer is topped up to :data:`FIRST_PROBES` per
group, then each round gives fresh probes to the layers whose WCI term's variance they
cut most (:mod:`.allocation`), pooled with the old (:mod:`.pooling`), until WCI's
relative SE, read at the upper end of its 90 % interval (:func:`cautious`), meets the
target, the target is out of reach, or :data:`WCI_ROUNDS` rounds are spent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from .allocation import allocate, by_count, reachable, wci_relative_se
from .estimate import TraceEstimate
from .groups import group_count
from .hutchinson import first_round, hutchinson_traces, probe_round
from .objective import Objective
from .pooling import pool
from .standard_errors import se_degrees_of_freedom, se_upper_factor

__all__ = [
    "FIRST_PROBES",
    "WCI_ROUNDS",
    "cautious",
    "far_below",
    "first_look",
    "first_probes",
    "mark_wci_stop",
    "wci_rounds",
]

# further rounds of WCI-targeted probes before giving up on the target
WCI_ROUNDS = 12
# seed offset between rounds, so every round draws fresh probes
ROUND_SEED = 7_777_777


def cautious(estimates: dict[str, TraceEstimate]) -> dict[str, TraceEstimate]:
    """The estimates with each Hutchinson SE at the upper end of its 90 % interval, for
    the stop rule. A rule that stops on the SE as measured stops early on the seeds
    whose SE came out small, and with Rademacher probes those are the seeds whose
    estimate came out low (the per-probe values are skewed: estimate and SE correlate
    0.4-0.7 on small nets), so the stopped estimates under-covered (docs/spec.md)."""
    return {
        n: replace(e, se=e.se * se_upper_factor(se_degrees_of_freedom(e)))
        for n, e in estimates.items()
    }


def wci_rounds(
    objective: Objective,
    names: list[str],
    fixed: dict[str, TraceEstimate],
    norms: dict[str, float],
    *,
    tol: float,
    layer_tol: float | None,
    min_probes: int,
    max_probes: int,
    seed: int,
    progress: Callable[[int], None] | None,
) -> dict[str, TraceEstimate]:
    """Hutchinson layers until the WCI's relative SE is <= ``tol``.

    Round 0 is a first look of one probe per group (:func:`first_look`), after which
    every layer not far below 0 (:func:`far_below`) is topped up to
    :data:`FIRST_PROBES` per group; or, with fewer groups, the first round at once; or
    every layer to ``layer_tol``. No rule reads a one-probe SE of a layer that matters:
    that SE, the spread between the groups, is noisy and correlated with the estimate
    (low estimates come with small SEs), so a rule that stops on it stops more often
    when the estimate is low; it under-covered (docs/spec.md). Then, with
    a_k = ||W_k||^2 s_k^2 / (4 Tr_k) (s_k the per-probe sd), the probe counts n_k that
    minimise sum_k n_k subject to sum_k a_k / n_k <= the variance left to these layers
    are n_k proportional to sqrt(a_k) (Lagrange); each round moves the layers towards
    those counts (capped at ``max_probes``) with fresh probes, pooled with the old.
    """
    look = first_look(objective, layer_tol, min_probes)
    first = hutchinson_traces(
        objective,
        tol=layer_tol if layer_tol is not None else math.inf,
        max_probes=max_probes if layer_tol is not None else min(min_probes, max_probes),
        min_probes=min_probes,
        seed=seed,
        names=names,
        progress=progress,
        probes=look
        or (None if layer_tol is not None else first_probes(objective, min_probes, max_probes)),
    )
    current = {e.name: e for e in first}
    if look:
        # the look may spare only the layers whose terms are 0 beyond doubt; the rest
        # get the first round's probes before any rule reads their SE
        top = [n for n, e in current.items() if not far_below(e)]
        more = first_probes(objective, min_probes, max_probes) - look
        if top and more > 0:
            for est in probe_round(
                objective,
                top,
                more,
                seed=seed + (WCI_ROUNDS + 1) * ROUND_SEED,
                group_seed=seed,
                progress=progress,
            ):
                current[est.name] = pool(current[est.name], est)
    for round_ in range(1, WCI_ROUNDS + 1):
        everything = {**fixed, **current}
        if wci_relative_se(norms, cautious(everything)) <= tol:
            break
        if not reachable(norms, fixed, cautious(current), tol, max_probes):
            break  # not even every layer at the cap meets the target: say so, stop
        extra = allocate(norms, fixed, cautious(current), tol, max_probes)
        if not extra:
            break
        for count, group in by_count(extra).items():
            for est in probe_round(
                objective,
                group,
                count,
                seed=seed + round_ * ROUND_SEED,
                group_seed=seed,
                progress=progress,
            ):
                current[est.name] = pool(current[est.name], est)
    return current


#: probes per group of the WCI rounds' first round, at least: an SE with 3 G degrees of
#: freedom (48 with 16 groups). With 2 per group (16) a GELU MLP's per-layer coverage
#: of its exact traces was 92 % and the z sd 1.28, with 4: 93 % and 1.09
#: (docs/spec.md); a layer the rounds leave at its first round keeps that SE.
FIRST_PROBES = 4


def first_look(objective: Objective, layer_tol: float | None, min_probes: int) -> int | None:
    """1 (one probe per group) where the groups alone give the SE ``min_probes - 1``
    degrees of freedom (G >= ``min_probes``), so that layers whose traces lie far below
    0 (most of a smooth network's at PGD points), whose WCI terms are 0 whatever the
    probes, cost one Hessian-vector product each; None (the first round at once) where
    the groups are fewer or each layer has its own target."""
    if layer_tol is not None or group_count(objective.n) < max(min_probes, 2):
        return None
    return 1


#: a first look spares a layer whose trace lies this many (cautious) SEs below 0
FAR_BELOW = 4.0


def far_below(e: TraceEstimate) -> bool:
    """Is the trace below 0 beyond doubt: T + 4 SE < 0 with the SE at the upper end of
    its 90 % interval (x1.35 for a look's 15 degrees of freedom)? Such a term is 0 and
    its slope ~0 whatever its SE, so no rule's choice hangs on the noise of that SE."""
    return e.trace + FAR_BELOW * e.se * se_upper_factor(se_degrees_of_freedom(e)) < 0


def first_probes(objective: Objective, min_probes: int, max_probes: int) -> int:
    """Probes per group of the first round: :func:`.hutchinson.first_round`, at least
    ``FIRST_PROBES``, at most ``max_probes``."""
    usual = first_round(min_probes, group_count(objective.n), max_probes)
    return int(min(max(usual, FIRST_PROBES), max_probes))


def mark_wci_stop(estimates: dict[str, TraceEstimate], norms: dict[str, float], tol: float) -> None:
    """Under the WCI target a noisy layer is converged when the WCI met ``tol``."""
    met = wci_relative_se(norms, cautious(estimates)) <= tol
    for e in estimates.values():
        if e.method in ("exact-ggn",) or e.stop_reason == "exact":
            continue
        e.converged = met
        e.stop_reason = "tol" if met else "cap"
