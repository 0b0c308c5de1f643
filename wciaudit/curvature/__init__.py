"""Per-layer traces of the adversarial-loss Hessian: route choice and the three estimators.

``layer_traces`` measures Tr(H_kk) for every layer k, on the route
:func:`.route.choose_routes` picks by expected cost:
- ``exact-ggn`` (:mod:`.ggn`) where the residual of the Gauss-Newton split is zero on
  the data (checked per layer) and C backward passes are the cheapest;
- ``mc-ggn`` (:mod:`.mc_ggn`) where the residual is zero and sampled labels are cheaper
  (many classes);
- ``hutchinson`` (:mod:`.hutchinson`) elsewhere, with block-restricted probes.

The tolerance applies per layer, or, given the layers' weight norms, to the WCI:
Hutchinson probes then go where they cut WCI's variance most. The settings come from
one :class:`wciaudit.config.ScanConfig`; the caller builds the :class:`.Objective`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..bounds import wci_term_se, wci_terms, weight_curvature_index
from ..config import ScanConfig
from ..model import no_tf32
from .estimate import TraceEstimate, mean_and_se
from .ggn import ggn_traces, hookable, residual_vanishes
from .groups import group_count
from .hutchinson import first_round, hutchinson_traces, probe_round
from .mc_ggn import mc_ggn_traces
from .objective import Objective
from .route import Route, choose_routes, memory_groups

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
    by_route = {
        kind: [n for n in names if routes[n].route == kind]
        for kind in ("exact-ggn", "mc-ggn", "hutchinson")
    }
    estimates: dict[str, TraceEstimate] = {}
    _gauss_newton(objective, by_route, classes, estimates, config, progress)
    _probes(objective, names, by_route["hutchinson"], estimates, config, norms, progress)
    if norms is not None:
        _mark_wci_stop(estimates, dict(zip(names, norms, strict=True)), config.tol)
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
        _wci_target(
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


# further rounds of WCI-targeted probes before giving up on the target
_WCI_ROUNDS = 12
# seed offset between rounds, so every round draws fresh probes
_ROUND_SEED = 7_777_777


def _term_var(norm: float, e: TraceEstimate) -> float:
    """Var of a layer's WCI term (:func:`wciaudit.bounds.wci_term_se` squared)."""
    return wci_term_se(norm, e.trace, e.se) ** 2


def _wci(norms: dict[str, float], estimates: dict[str, TraceEstimate]) -> float:
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


#: one-sided level of the upper confidence bound on an SE that the rounds stop on
_STOP_LEVEL = 0.1
_Z_STOP = -1.2815515655446004  # the standard normal's 10 % quantile


def se_degrees_of_freedom(e: TraceEstimate) -> float:
    """Degrees of freedom of a Hutchinson estimate's SE: G (p - 1) for p probes per
    group over G groups (the within-group spread), G - 1 for one probe per group (the
    spread between groups); infinite for the routes whose SE rests on every example."""
    groups = len(e.group_shares)
    if e.method != "hutchinson" or not isinstance(e.probes, int) or groups == 0:
        return math.inf
    return float(groups * (e.probes - 1) if e.probes > 1 else max(groups - 1, 1))


def se_upper_factor(dof: float) -> float:
    """sqrt(dof / chi2_{0.1}(dof)): the factor that takes an SE with ``dof`` degrees of
    freedom to the upper end of its one-sided 90 % confidence interval (Wilson and
    Hilferty's cube-root approximation to the chi-square quantile, within 1 % from 3
    degrees of freedom on).

    Example:
        >>> round(se_upper_factor(16), 2), round(se_upper_factor(160), 2)
        (1.31, 1.08)
    """
    if not math.isfinite(dof):
        return 1.0
    h = 2.0 / (9.0 * dof)
    q = dof * max(1.0 - h + _Z_STOP * math.sqrt(h), 0.05) ** 3
    return math.sqrt(dof / q)


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


def _wci_target(
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

    Round 0 is a first look of one probe per group (:func:`_first_look`), after which
    every layer not far below 0 (:func:`_far_below`) is topped up to
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
    look = _first_look(objective, layer_tol, min_probes)
    first = hutchinson_traces(
        objective,
        tol=layer_tol if layer_tol is not None else math.inf,
        max_probes=max_probes if layer_tol is not None else min(min_probes, max_probes),
        min_probes=min_probes,
        seed=seed,
        names=names,
        progress=progress,
        probes=look
        or (None if layer_tol is not None else _first_probes(objective, min_probes, max_probes)),
    )
    current = {e.name: e for e in first}
    if look:
        # the look may spare only the layers whose terms are 0 beyond doubt; the rest
        # get the first round's probes before any rule reads their SE
        top = [n for n, e in current.items() if not _far_below(e)]
        more = _first_probes(objective, min_probes, max_probes) - look
        if top and more > 0:
            for est in probe_round(
                objective,
                top,
                more,
                seed=seed + (_WCI_ROUNDS + 1) * _ROUND_SEED,
                group_seed=seed,
                progress=progress,
            ):
                current[est.name] = pool(current[est.name], est)
    for round_ in range(1, _WCI_ROUNDS + 1):
        everything = {**fixed, **current}
        if wci_relative_se(norms, cautious(everything)) <= tol:
            break
        if not _reachable(norms, fixed, cautious(current), tol, max_probes):
            break  # not even every layer at the cap meets the target: say so, stop
        extra = _allocate(norms, fixed, cautious(current), tol, max_probes)
        if not extra:
            break
        for count, group in _by_count(extra).items():
            for est in probe_round(
                objective,
                group,
                count,
                seed=seed + round_ * _ROUND_SEED,
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


def _first_look(objective: Objective, layer_tol: float | None, min_probes: int) -> int | None:
    """1 (one probe per group) where the groups alone give the SE ``min_probes - 1``
    degrees of freedom (G >= ``min_probes``), so that layers whose traces lie far below
    0 (most of a smooth network's at PGD points), whose WCI terms are 0 whatever the
    probes, cost one Hessian-vector product each; None (the first round at once) where
    the groups are fewer or each layer has its own target."""
    if layer_tol is not None or group_count(objective.n) < max(min_probes, 2):
        return None
    return 1


#: a first look spares a layer whose trace lies this many (cautious) SEs below 0
_FAR_BELOW = 4.0


def _far_below(e: TraceEstimate) -> bool:
    """Is the trace below 0 beyond doubt: T + 4 SE < 0 with the SE at the upper end of
    its 90 % interval (x1.35 for a look's 15 degrees of freedom)? Such a term is 0 and
    its slope ~0 whatever its SE, so no rule's choice hangs on the noise of that SE."""
    return e.trace + _FAR_BELOW * e.se * se_upper_factor(se_degrees_of_freedom(e)) < 0


def _first_probes(objective: Objective, min_probes: int, max_probes: int) -> int:
    """Probes per group of the first round: :func:`.hutchinson.first_round`, at least
    ``FIRST_PROBES``, at most ``max_probes``."""
    usual = first_round(min_probes, group_count(objective.n), max_probes)
    return int(min(max(usual, FIRST_PROBES), max_probes))


def _term_variance_at(norm: float, e: TraceEstimate, probes: int) -> float:
    """Var of a Hutchinson layer's WCI term if it had ``probes`` probes: the probe part
    of its SE shrinks as 1 / sqrt(probes), the subset part stays, and the term's slope
    follows the SE (near 0 the variance shrinks only as 1 / sqrt(probes))."""
    per_probe = e.probe_se**2 * int(e.probes)
    se = math.sqrt(per_probe / max(probes, 1) + e.sample_se**2)
    return wci_term_se(norm, e.trace, se) ** 2


def _reachable(
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
    wci = _wci(norms, {**fixed, **hope})
    var = math.fsum(_term_var(norms[n], e) for n, e in fixed.items())
    var += math.fsum(
        _term_variance_at(norms[n], e, max(int(e.probes), max_probes)) for n, e in hope.items()
    )
    return var <= (tol * wci) ** 2


def _allocate(
    norms: dict[str, float],
    fixed: dict[str, TraceEstimate],
    current: dict[str, TraceEstimate],
    tol: float,
    max_probes: int,
) -> dict[str, int]:
    wci = _wci(norms, {**fixed, **current})
    budget = (tol * wci) ** 2 - math.fsum(_term_var(norms[n], e) for n, e in fixed.items())
    # per-probe variance of each open layer's term: a_k^2 Var(Tr_k) n_k, its slope taken
    # 2 SE above the estimate: at the estimate a trace that came out low near 0 gets a
    # flat slope and no more probes, so the low estimates of such layers were kept and
    # the high ones pulled back, and the layer's estimates came out biased low
    a = {
        n: _term_var(norms[n], replace(e, trace=e.trace + 2 * e.se)) * e.probes
        for n, e in current.items()
        if e.se > 0 and isinstance(e.probes, int) and e.probes < max_probes
    }
    a = {n: v for n, v in a.items() if v > 0}
    capped = math.fsum(_term_var(norms[n], e) for n, e in current.items() if n not in a)
    budget -= capped
    if not a or budget <= 0:
        return {}  # the layers at their cap (or the fixed routes) already exceed the target
    root_sum = math.fsum(math.sqrt(v) for v in a.values())
    out = {}
    for n, v in a.items():
        have = int(current[n].probes)
        want = min(max_probes, math.ceil(1.1 * math.sqrt(v) * root_sum / budget))
        if want > have:
            out[n] = int(min(max_probes - have, max(want - have, math.ceil(have / 2), 4)))
    return out


def _by_count(extra: dict[str, int]) -> dict[int, list[str]]:
    """Layers grouped by the probes they get, one Hutchinson call per group."""
    out: dict[int, list[str]] = {}
    for n, k in extra.items():
        out.setdefault(k, []).append(n)
    return out


def pool(a: TraceEstimate, b: TraceEstimate) -> TraceEstimate:
    """Two independent Hutchinson estimates of one trace as one, on the same groups.

    The mean of all probe values; the probe part from the pooled within-group spread,
    as :func:`.hutchinson.grouped_mean_and_se` would give from all the values:
    with p = p_a + p_b probes per group and W = sum_g s_g^2 / p,

        sum_g (p - 1) s_g^2 = (p_a - 1) p_a W_a + (p_b - 1) p_b W_b
                              + p_a p_b / p * sum_g (ybar_ga - ybar_gb)^2,

    so the probe SE keeps G (p - 1) degrees of freedom (taken from the p probe totals
    alone it had p - 1, and the rounds stopped on its noise). A run of one probe per
    group adds nothing to the first sum (its ``probe_se`` is the group spread, not W).
    Without group shares the probe totals are pooled. A Hessian-subset part
    (``sample_se``) estimates the same quantity in both runs and is averaged by probes."""
    na, nb = int(a.probes), int(b.probes)
    n = na + nb
    mean = (na * a.trace + nb * b.trace) / n
    groups = len(a.group_shares)
    if groups > 0 and groups == len(b.group_shares):
        within = (na - 1) * na * a.probe_se**2 + (nb - 1) * nb * b.probe_se**2
        within += (
            na
            * nb
            / n
            * math.fsum((x - y) ** 2 for x, y in zip(a.group_shares, b.group_shares, strict=True))
        )
        probe_se = math.sqrt(within / (n - 1) / n)
    else:
        pa = a.probe_se if a.probe_se > 0 else a.se
        pb = b.probe_se if b.probe_se > 0 else b.se
        ss = (na - 1) * pa**2 * na + na * a.trace**2 + (nb - 1) * pb**2 * nb + nb * b.trace**2
        probe_se = math.sqrt(max(ss - n * mean**2, 0.0) / (n - 1) / n)
    sample_se = math.sqrt((na * a.sample_se**2 + nb * b.sample_se**2) / n)
    shares = (
        tuple((na * x + nb * y) / n for x, y in zip(a.group_shares, b.group_shares, strict=True))
        if len(a.group_shares) == len(b.group_shares)
        else ()
    )
    history = a.history + [[n, mean, math.hypot(probe_se, sample_se)]]
    return TraceEstimate(
        name=a.name,
        trace=mean,
        se=math.hypot(probe_se, sample_se),
        probes=n,
        method=a.method,
        converged=a.converged,
        stop_reason=a.stop_reason,
        history=history,
        probe_se=probe_se if a.probe_se > 0 else 0.0,
        sample_se=sample_se,
        se_covers=a.se_covers,
        # a first look's note on its SE no longer holds once probes are pooled with it
        route_reason=b.route_reason if na < 2 else a.route_reason,
        group_shares=shares,
    )


def _mark_wci_stop(
    estimates: dict[str, TraceEstimate], norms: dict[str, float], tol: float
) -> None:
    """Under the WCI target a noisy layer is converged when the WCI met ``tol``."""
    met = wci_relative_se(norms, cautious(estimates)) <= tol
    for e in estimates.values():
        if e.method in ("exact-ggn",) or e.stop_reason == "exact":
            continue
        e.converged = met
        e.stop_reason = "tol" if met else "cap"


def _num_classes(objective: Objective) -> int:
    with torch.no_grad():
        xb = objective.x[:1].to(objective.device, objective.dtype)
        return int(objective.model(xb).shape[1])
