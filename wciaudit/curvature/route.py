"""Which estimator measures each layer's trace, by expected cost (SPEC: exact route).

Three routes ``auto`` chooses from, and one it never chooses:
- ``exact-ggn`` (:mod:`.ggn`): C backward passes per batch, shared by every
  Linear/Conv2d layer (other layers: C vector-Jacobian products per memory group);
  exact, so no probe noise. Valid where the residual vanishes.
- ``mc-ggn`` (:mod:`.mc_ggn`): k sampled labels per example, k backward passes shared
  by all layers whatever C is; unbiased, noisy. Valid where the residual vanishes.
- ``hutchinson`` (:mod:`.hutchinson`): per layer and probe one Hessian-vector product
  (about 2 backward passes); valid everywhere.
- ``hutch++`` (:mod:`.hutchpp`), on request only (``hutchpp``): 2 s sketch products
  and n residual probes per layer. Its cost depends on the block's spectrum, which is
  unknown before the sketch is spent, so ``auto`` does not weigh it
  (docs/cost_model.md).

Costs are counted in backward passes over the Hessian examples. Hutchinson's probe
count is the expected count for the tolerance, n = max(min_probes, (spread / tol)^2),
with a per-probe relative spread of ``PROBE_SPREAD`` (block-restricted probes measured
0.2-0.7 on the sample ResNet and ViT); the MC route's label count is
max(k_labels, (LABEL_SPREAD / tol)^2 / n) for n examples, the labels its SE needs to
reach the tolerance on its own. Exact beats MC when C <= ``EXACT_PREMIUM`` times
that label count: an exact value has no label noise, which is worth a few passes
(with the defaults, 2 labels: exact up to 16 classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .ggn import ggn_bytes_per_example, hookable, residual_vanishes
from .objective import Objective

ROUTES = ("exact-ggn", "mc-ggn", "hutchinson", "hutch++")
METHODS = ("auto", "ggn", "mc-ggn", "hutchinson", "hutchpp")
# per-probe relative spread sd / |trace| of a block-restricted Rademacher probe
PROBE_SPREAD = 0.5
# per-label relative spread sd / trace of a per-example squared gradient norm
# (measured 0.2-0.45 per layer on a randomly initialised resnet18 at 32 px; a trained
# network's peaked softmax makes the norms heavier-tailed, hence the margin)
LABEL_SPREAD = 1.0
# backward passes per block-restricted Hessian-vector product
HVP_PASSES = 2
# the exact route is taken while it costs at most this many times the sampled-label
# route: its value carries no label noise (with 2 labels: exact up to 16 classes)
EXACT_PREMIUM = 8
# the routes taken on every layer when asked for: (route, reason, cost; None: Hutchinson's).
# Hutch++ has no expected cost: 2 s sketch products buy a residual whose spread depends
# on the block's spectrum, unknown before they are spent (docs/cost_model.md)
_ON_REQUEST = {
    "hutchinson": ("hutchinson", "Hutchinson requested", None),
    "hutchpp": ("hutch++", "Hutch++ requested", math.nan),
}
_NOT_PIECEWISE_LINEAR = "residual does not vanish (output not piecewise linear in this weight)"


@dataclass(frozen=True)
class Route:
    """The estimator one layer takes.

    Attributes:
        name: parameter name of the layer.
        route: ``exact-ggn``, ``mc-ggn`` or ``hutchinson``.
        reason: one sentence saying why.
        cost: expected backward-pass equivalents this layer adds (a shared pass set is
            divided among the layers that share it).
    """

    name: str
    route: str
    reason: str
    cost: float


def expected_probes(min_probes: int, max_probes: int, tol: float) -> int:
    """Probes Hutchinson is expected to spend on one layer at relative SE ``tol``."""
    if tol <= 0:
        return max_probes
    return int(min(max_probes, max(min_probes, math.ceil((PROBE_SPREAD / tol) ** 2))))


def expected_labels(k_labels: int, n: int, tol: float) -> int:
    """Labels per example the MC route is expected to need at relative SE ``tol``."""
    if tol <= 0:
        return 10**9  # no finite count reaches a zero tolerance
    return int(max(k_labels, math.ceil((LABEL_SPREAD / tol) ** 2 / max(n, 1))))


def choose_routes(
    objective: Objective,
    names: list[str],
    *,
    method: str,
    min_probes: int,
    memory_bytes: int,
    classes: int,
    k_labels: int,
    tol: float,
    max_probes: int,
    seed: int,
) -> list[Route]:
    """One :class:`Route` per layer, in the order of ``names``.

    Args:
        objective: model and Hessian examples (the residual is checked on them).
        names: layers.
        method: ``auto`` (cheapest expected route), ``ggn`` (exact wherever exact),
            ``mc-ggn`` (sampled labels wherever the residual vanishes),
            ``hutchinson`` (probes everywhere) or ``hutchpp`` (Hutch++ everywhere).
        min_probes, max_probes, tol: Hutchinson's settings, for its expected cost.
        memory_bytes: budget for one chunk of per-example Jacobians (exact route,
            layers other than Linear/Conv2d).
        classes: C, the number of logits.
        k_labels: labels per example of the MC route.
        seed: seed of the residual check.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    probes = expected_probes(min_probes, max_probes, tol)
    hutch_cost = float(HVP_PASSES * probes)
    if method in _ON_REQUEST:
        route, reason, cost = _ON_REQUEST[method]
        return [Route(n, route, reason, hutch_cost if cost is None else cost) for n in names]
    vanishes = residual_vanishes(objective, seed=seed)
    routes: dict[str, Route] = {}
    for n in names:
        if not vanishes[n]:
            routes[n] = Route(n, "hutchinson", _NOT_PIECEWISE_LINEAR, hutch_cost)
    candidates = [n for n in names if n not in routes]
    if not candidates:
        return [routes[n] for n in names]
    labels = expected_labels(k_labels, objective.n, tol)
    exact_layers, exact_cost, mc_cost = _ggn_costs(
        objective, candidates, classes, memory_bytes, labels
    )
    big = [n for n in candidates if n not in exact_layers]
    if method == "ggn":
        exact_pick = {n: "residual vanishes; exact route requested" for n in exact_layers}
        share = exact_cost / max(len(exact_layers), 1)
        for n in exact_layers:
            routes[n] = Route(n, "exact-ggn", exact_pick[n], share)
        for n in big:
            routes[n] = Route(n, "hutchinson", _too_big(objective, n, classes), hutch_cost)
    elif method == "mc-ggn":
        for n in candidates:
            routes[n] = Route(
                n,
                "mc-ggn",
                "residual vanishes; sampled-label GGN requested",
                mc_cost / len(candidates),
            )
    else:
        routes.update(
            _auto_routes(
                objective,
                candidates,
                exact_layers,
                big,
                classes,
                probes,
                labels,
                exact_cost,
                mc_cost,
                hutch_cost,
            )
        )
    return [routes[n] for n in names]


def _ggn_costs(
    objective: Objective, candidates: list[str], classes: int, memory_bytes: int, labels: int
) -> tuple[set[str], float, float]:
    """The layers the exact GGN can take within ``memory_bytes``, its cost and the MC cost.

    Costs are backward passes: Linear/Conv2d layers share C, each Jacobian group of
    other layers costs C; the sampled-label route costs ``labels`` per kind of layer.
    """
    fast = set(hookable(objective, candidates))
    slow = [n for n in candidates if n not in fast]
    groups = ([[n for n in candidates if n in fast]] if fast else []) + memory_groups(
        objective, slow, classes, memory_bytes
    )
    exact_layers = {n for g in groups for n in g}
    exact_cost = float(len(groups) * classes)
    mc_cost = float(labels * ((1 if fast else 0) + (1 if slow else 0)))
    return exact_layers, exact_cost, mc_cost


def _auto_routes(
    objective: Objective,
    candidates: list[str],
    exact_layers: set[str],
    big: list[str],
    classes: int,
    probes: int,
    labels: int,
    exact_cost: float,
    mc_cost: float,
    hutch_cost: float,
) -> dict[str, Route]:
    """``auto`` among the layers whose residual vanishes: the cheapest expected route.

    Costs are backward passes: ``exact_cost`` for every exact layer together, ``mc_cost``
    for the sampled-label route over all candidates, ``hutch_cost`` per layer.
    """
    routes: dict[str, Route] = {}
    hutch_all = hutch_cost * len(candidates)
    c = f"{classes} classes"
    exact_line = f"exact GGN {exact_cost:g} backward passes"
    mc_line = f"sampled-label GGN {mc_cost:g}"
    hutch_line = f"Hutchinson {hutch_all:g} ({probes} probes per layer)"
    # layers whose C Jacobian rows do not fit take sampled labels beside the exact route
    exact_plan = exact_cost + (labels if big else 0)
    if exact_layers and exact_plan <= EXACT_PREMIUM * mc_cost and exact_plan <= hutch_all:
        reason = (
            f"residual vanishes; {c}: {exact_line} <= {EXACT_PREMIUM} x {mc_line} "
            f"(exact has no label noise), {hutch_line}"
        )
        for n in exact_layers:
            routes[n] = Route(n, "exact-ggn", reason, exact_cost / len(exact_layers))
        for n in big:
            routes[n] = Route(
                n, "mc-ggn", _too_big(objective, n, classes) + "; sampled labels", float(labels)
            )
    elif mc_cost <= hutch_all:
        why = (
            f"{mc_line} passes, {exact_line} > {EXACT_PREMIUM} x that"
            if not big
            else f"{mc_line} passes; C Jacobian rows of some layers exceed the memory budget"
        )
        reason = f"residual vanishes; {c}: {why}, {hutch_line}"
        for n in candidates:
            routes[n] = Route(n, "mc-ggn", reason, mc_cost / len(candidates))
    else:
        reason = f"residual vanishes, but {hutch_line} < {mc_line} and {exact_line}"
        for n in candidates:
            routes[n] = Route(n, "hutchinson", reason, hutch_cost)
    return routes


def _too_big(objective: Objective, name: str, classes: int) -> str:
    mib = ggn_bytes_per_example(objective, [name], classes) / 2**20
    return f"residual vanishes, but its {classes} Jacobian rows ({mib:.0f} MiB per example) exceed the memory budget"


def memory_groups(
    objective: Objective, names: list[str], classes: int, memory_bytes: int
) -> list[list[str]]:
    """Split layers into groups whose per-example Jacobian fits ``memory_bytes``;
    a layer that alone does not fit is left out (no exact route for it)."""
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
