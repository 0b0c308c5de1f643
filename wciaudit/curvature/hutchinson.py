"""Hutchinson's trace estimator (Hutchinson 1990), one diagonal Hessian block at a time.

For a layer W_k and Rademacher probes v (entries +-1, restricted to that layer's block)

    Tr(H_kk) = E[v^T H_kk v],   H_kk v = d/dW_k (dL/dW_k . v)

so each probe costs one Hessian-vector product through the double-backward graph of
the batch. Restricting a probe to one block removes the cross-block terms H_kj v_j
that make a whole-model probe 10-100x noisier (SPEC: Layers, norms, curvature).

Engine (:mod:`.probe_graphs`, :mod:`.hvp`):
- one forward + one ``create_graph`` backward per data batch serves every probe of
  every layer in a round (the graph is kept across rounds when the data is one batch);
- probes of a layer are pushed through the graph together (``is_grads_batched``,
  i.e. ``vmap`` over the backward), falling back to a loop where an op has no
  batching rule;
- rounds: every layer first gets the probes that estimate its probe variance with
  at least ``min_probes - 1`` degrees of freedom (:func:`first_round`: each probe is
  one vector per group, so with 16 groups 2 probes give 16); after each round a layer
  stops when its relative total standard error is <= ``tol`` (``stop_reason="tol"``),
  at ``max_probes`` (``"cap"``), or when only the subset part is above ``tol``
  (``"subset"``); the others get the probes their running variance says they need
  (:func:`.growth.more_probes`), so probes go where the error is.

The examples are split into random groups and each probe is one independent vector
per group; the estimate is the sum over groups of the mean probe value, and its SE
is Cochran's two-stage estimator (:func:`.standard_errors.grouped_mean_and_se`): probe
noise within groups, the Hessian subset's draw between them. Probes are drawn on the model's device
from a generator seeded by (seed, layer index, round, group), so results do not depend
on the batch size or the number of processes; a CUDA generator draws other probes than
the CPU's from the same seed, so CPU and GPU figures agree within their SE, not bit for
bit.

Example:
    >>> import torch
    >>> from wciaudit.curvature.objective import Objective
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    >>> obj = Objective(net, torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,)),
    ...                 ["0.weight", "2.weight"], 8, torch.device("cpu"))
    >>> est = hutchinson_traces(obj, tol=0.05, max_probes=50, min_probes=10, seed=0)
    >>> [e.method for e in est]
    ['hutchinson', 'hutchinson']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch

from .estimate import TraceEstimate
from .groups import GROUPS, group_count, probe_groups
from .growth import more_probes
from .objective import Objective
from .probe_graphs import PerGroupGraphs, Round, TappedGraphs
from .standard_errors import grouped_mean_and_se

Progress = Callable[[int], None]

# what an estimate from one probe per group says of its SE (:func:`grouped_mean_and_se`)
ONE_PROBE = (
    "one probe per group: the SE is the spread between groups, probes and subset "
    "together (an upper bound)"
)


def rademacher(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Entries +-1 with probability 1/2 each (int8), drawn on the generator's device."""
    return (
        torch.randint(0, 2, shape, generator=generator, dtype=torch.int8, device=generator.device)
        .mul_(2)
        .sub_(1)
    )


def _probes(
    seed: int,
    layer: int,
    round_: int,
    group: int,
    count: int,
    shape: tuple[int, ...],
    device: torch.device = torch.device("cpu"),
) -> torch.Tensor:
    """The probes of one (layer, round, group), drawn on ``device``, so that a GPU does
    not wait for a CPU draw and a host-to-device copy of every chunk."""
    g = torch.Generator(device=device)
    g.manual_seed(
        (seed * 7_919 + layer * 104_729 + round_ * 15_485_863 + group * 32_452_843 + 1)
        % (2**63 - 1)
    )
    return rademacher((count, *shape), g)


def hutchinson_traces(
    objective: Objective,
    *,
    tol: float,
    max_probes: int,
    min_probes: int,
    seed: int,
    progress: Progress | None = None,
    names: list[str] | None = None,
    groups: int = GROUPS,
    group_seed: int | None = None,
    probes: int | None = None,
) -> list[TraceEstimate]:
    """Per-layer Hutchinson estimates of Tr(H_kk) with standard errors.

    The examples are split into G = min(``groups``, n // 4) random groups; a probe is one
    Rademacher vector per group, pushed through that group's graph, so the spread over
    groups measures the Hessian subset's sampling error and the spread over probes
    within a group the probe noise (:func:`grouped_mean_and_se`). The group split does
    not depend on the batch size (a group larger than a batch takes several).

    Args:
        objective: model, fixed examples, layers (``n_population``: the split's size).
        tol: stop a layer when its total SE / |mean| <= tol.
        max_probes: probe cap per layer.
        min_probes: the probe variance has at least ``min_probes - 1`` degrees of
            freedom before the stop rule may fire (:func:`first_round`).
        seed: probe and group seed.
        progress: called with the number of probes done after each layer-batch.
        names: subset of ``objective.names`` to estimate (default all).
        groups: the most groups the examples are split into.
        group_seed: seed of the group split (default ``seed``); runs that are pooled
            or paired share it, so their group shares line up.
        probes: exactly this many probes per layer in one round (None: the first
            round of :func:`first_round`, then the stop rule).

    Returns:
        One :class:`TraceEstimate` per layer, in the order of ``names``.
    """
    names = list(objective.names if names is None else names)
    index = {n: objective.names.index(n) for n in names}
    sizes, members = _split(objective, groups, seed if group_seed is None else group_seed)
    values = {n: torch.zeros(len(sizes), 0, dtype=torch.float64) for n in names}
    history: dict[str, list[list[float]]] = {n: [] for n in names}
    stop: dict[str, str] = {}
    max_probes = max_probes if probes is None else probes
    want = dict.fromkeys(names, probes or first_round(min_probes, len(sizes), max_probes))
    # layers whose groups share one graph through zero weight taps (:mod:`.taps`)
    tapped = TappedGraphs(objective, names, members) if len(sizes) > 1 else None
    untapped = [n for n in names if tapped is None or n not in tapped.names]
    per_group = PerGroupGraphs(objective, untapped, members)
    round_ = 0
    while want:
        draw = partial(_probes, seed, round_=round_, device=objective.device)
        sums = {n: torch.zeros(len(sizes), k, dtype=torch.float64) for n, k in want.items()}
        this = Round(want, index, draw, sums, progress)
        if tapped is not None:
            tapped.round(this)
        per_group.round(this)
        # one collective per round: every process gets every group's probe values
        flat = objective.reduce(torch.cat([sums[n].flatten() for n in want]))
        parts = torch.split(flat, [len(sizes) * k for k in want.values()])
        next_want: dict[str, int] = {}
        for (n, k), part in zip(want.items(), parts, strict=True):
            values[n] = torch.cat([values[n], part.reshape(len(sizes), k)], dim=1)
            mean, se, probe_se, sample_se = grouped_mean_and_se(
                values[n], sizes, objective.n, objective.n_population
            )
            count = values[n].shape[1]
            history[n].append([count, mean, se])
            reason, extra = stop_rule(
                count, mean, se, probe_se, sample_se, tol=tol, max_probes=max_probes
            )
            if reason is None:
                next_want[n] = extra
            else:
                stop[n] = reason
        want = next_want
        round_ += 1
    return [_estimate(objective, n, values[n], sizes, stop[n], history[n]) for n in names]


def probe_round(
    objective: Objective,
    names: list[str],
    probes: int,
    *,
    seed: int,
    group_seed: int,
    progress: Progress | None = None,
) -> list[TraceEstimate]:
    """Exactly ``probes`` probes per group for each of ``names``, one round, no stop
    rule: a top-up of the WCI-targeted rounds, on the groups of ``group_seed`` so that
    it pools with the earlier rounds (:func:`wciaudit.curvature.pooling.pool`)."""
    return hutchinson_traces(
        objective,
        tol=math.inf,
        max_probes=probes,
        min_probes=probes,
        seed=seed,
        progress=progress,
        names=names,
        group_seed=group_seed,
        probes=probes,
    )


def first_round(min_probes: int, groups: int, max_probes: int) -> int:
    """Probes per layer in the first round: the fewest p >= 2 whose within-group probe
    variance, G (p - 1) degrees of freedom over G groups, has at least ``min_probes - 1``
    (what ``min_probes`` probes through one graph give), capped at ``min_probes`` and
    ``max_probes``. With 16 groups and ``min_probes`` 10: 2 probes (16 vectors per layer).

    Example:
        >>> first_round(10, 16, 200), first_round(10, 4, 200), first_round(10, 1, 200)
        (2, 4, 10)
    """
    p = 1 + math.ceil(max(min_probes - 1, 1) / max(groups, 1))
    return int(min(max(p, 2), max(min_probes, 2), max_probes))


def _split(objective: Objective, groups: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Each group's size, and the positions of its examples among this process's."""
    n_groups = group_count(objective.n, groups)
    assignment = probe_groups(objective.n, groups, seed)
    sizes = torch.bincount(assignment, minlength=n_groups)
    offset = objective.offset
    local = assignment[offset : offset + objective.n_local]
    return sizes, [torch.nonzero(local == g).flatten() for g in range(n_groups)]


def stop_rule(
    count: int,
    mean: float,
    se: float,
    probe_se: float,
    sample_se: float,
    *,
    tol: float,
    max_probes: int,
) -> tuple[str | None, int]:
    """Hutchinson's stop rule for one layer after a round (module docstring, "rounds").

    Args:
        count: probes so far; mean, se: the estimate and its total SE;
        probe_se, sample_se: the probe and Hessian-subset parts of ``se``.
        tol: target relative SE; max_probes: the probe cap.

    Returns:
        ``(reason, 0)`` when the layer stops, reason "tol", "cap" or "subset"; else
        ``(None, k)``, the k more probes its running variance says it needs (at least
        half again what it has, at least 4, at most up to the cap).
    """
    target = (tol * abs(mean)) ** 2
    if se <= tol * abs(mean):
        return "tol", 0
    if count >= max_probes:
        return "cap", 0
    if probe_se <= tol * abs(mean):
        return "subset", 0  # the subset's spread alone is above tol: probes cannot help
    # only the probe part shrinks with more probes: aim it at what the
    # subset part leaves of the tolerance
    room = target - sample_se**2 if target > sample_se**2 else target
    needed = math.inf if mean == 0 else count * probe_se**2 / room
    return None, more_probes(count, needed, max_probes)


def _estimate(
    objective: Objective,
    name: str,
    values: torch.Tensor,
    sizes: torch.Tensor,
    stop: str,
    history: list[list[float]],
) -> TraceEstimate:
    mean, se, probe_se, sample_se = grouped_mean_and_se(
        values, sizes, objective.n, objective.n_population
    )
    subset = objective.n_population is not None and objective.n < objective.n_population
    return TraceEstimate(
        name=name,
        trace=mean,
        se=se,
        probes=values.shape[1],
        method="hutchinson",
        converged=stop == "tol",
        stop_reason=stop,
        history=history,
        probe_se=probe_se,
        sample_se=sample_se,
        se_covers=("probes", "hessian-subset") if subset else ("probes",),
        group_shares=tuple(values.mean(1).tolist()),
        route_reason=ONE_PROBE if values.shape[1] == 1 and values.shape[0] > 1 else "",
    )
