"""Hutchinson's trace estimator (Hutchinson 1990), one diagonal Hessian block at a time.

For a layer W_k and Rademacher probes v (entries +-1, restricted to that layer's block)

    Tr(H_kk) = E[v^T H_kk v],   H_kk v = d/dW_k (dL/dW_k . v)

so each probe costs one Hessian-vector product through the double-backward graph of
the batch. Restricting a probe to one block removes the cross-block terms H_kj v_j
that make a whole-model probe 10-100x noisier (SPEC: Layers, norms, curvature).

Engine:
- one forward + one ``create_graph`` backward per data batch serves every probe of
  every layer in a round (the graph is kept across rounds when the data is one batch);
- probes of a layer are pushed through the graph together (``is_grads_batched``,
  i.e. ``vmap`` over the backward), falling back to a loop where an op has no
  batching rule;
- rounds: every layer first gets the probes that estimate its probe variance with
  at least ``min_probes - 1`` degrees of freedom (:func:`first_round`: each probe is
  one vector per group, so with 16 groups 2 probes give 16); after each round a layer
  stops when
  its relative total standard error is <= ``tol`` (``stop_reason="tol"``), at
  ``max_probes`` (``"cap"``), or when only the subset part is above ``tol``
  (``"subset"``); the others get the probes their running variance says
  they need (at least half again what they have), so probes go where the error is.

The examples are split into random groups and each probe is one independent vector
per group; the estimate is the sum over groups of the mean probe value, and its SE
is Cochran's two-stage estimator (:func:`grouped_mean_and_se`): probe noise within
groups, the Hessian subset's draw between them. Probes are drawn on the model's device
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import torch

from ..retry import is_out_of_memory
from .estimate import TraceEstimate
from .ggn import weight_modules
from .groups import GROUPS, group_count, probe_groups
from .objective import Objective
from .taps import GroupTaps, tappable

Progress = Callable[[int], None]
_PROBE_CHUNK = 16

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


class _BatchedHvp:
    """v^T H_kk v for a stack of probes through one double-backward graph.

    Two ways give the same values: all probes at once (``is_grads_batched``, a vmap
    over the backward) or one product per probe. Batching pays for Linear weights and
    on GPUs; on a CPU the batched convolution backward measured 2-3x slower than the
    loop (benchmarks/trace_speed.py), so there convolutions loop. The rule depends on
    the layer and device only, never on timings, so runs stay repeatable; an op without
    a vmap batching rule turns batching off for the rest of the run.

    With ``groups`` the weight is a zero tap (G, *shape) (:mod:`.taps`) and the probes
    (p, G, *shape) hold one vector per group: the values are then (p, G), one per group.
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
        lead = 2 if groups else 1  # leading axes kept: probes, and groups
        if not grad_k.requires_grad:  # the loss does not reach this layer's weight
            return torch.zeros(probes.shape[:lead], dtype=torch.float64)
        linear = weight_k.dim() - (lead - 1) == 2
        batched = (
            self.batched_ok and probes.shape[0] > 1 and (linear or weight_k.device.type == "cuda")
        )
        out = self._batched(grad_k, weight_k, probes, lead) if batched else None
        return out if out is not None else self._loop(grad_k, weight_k, probes, lead)

    def _batched(
        self, grad_k: torch.Tensor, weight_k: torch.Tensor, probes: torch.Tensor, lead: int
    ) -> torch.Tensor | None:
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
        if hv is None:
            return torch.zeros(probes.shape[:lead], dtype=torch.float64)
        return (hv * probes).flatten(lead).sum(lead).double().cpu()

    @staticmethod
    def _loop(
        grad_k: torch.Tensor, weight_k: torch.Tensor, probes: torch.Tensor, lead: int
    ) -> torch.Tensor:
        out = []
        for v in probes:
            (hv,) = torch.autograd.grad(
                grad_k, weight_k, grad_outputs=v, retain_graph=True, allow_unused=True
            )
            if hv is None:
                out.append(torch.zeros(probes.shape[1:lead], dtype=torch.float64))
            else:
                out.append((hv * v).flatten(lead - 1).sum(-1).double().cpu())
        return torch.stack(out)


def grouped_mean_and_se(
    values: torch.Tensor, sizes: torch.Tensor, n: int, n_population: int | None
) -> tuple[float, float, float, float]:
    """Trace and SEs from per-group probe values, a two-stage sample (Cochran 1977, 10.8).

    Stage one draws the n examples out of the split's N (the groups are a random
    partition of them, so the G groups are clusters of a random sample); stage two
    draws p independent probes per group. With q_gj = v_gj^T H_g v_gj (H_g the Hessian
    of group g's share of the mean loss) and ybar_g = mean_j q_gj:

        T = sum_g ybar_g
        W = sum_g s_g^2 / p                                (probe variance, s_g^2 over j)
        B = G/(G-1) sum_g (ybar_g - m_g T / n)^2           (between groups, ratio form)
        Var(T) = (1 - f) B + f W,  f = n / N              (f = 1 when N is None)

    B holds the probe noise of the ybar_g as well, so Var(T) = W + (1 - f)(B - W): the
    probe part and the subset part, the latter kept at >= 0.

    With one probe per group W cannot be measured, and B alone is the SE: the "ultimate
    cluster" estimator (Kalton 1979), which covers probes and subset together and
    overstates Var(T) by f times the between-group part of B (nothing for a subset
    small beside its split; at f = 1, the whole split, all of it). It is reported as
    the probe part (``probe_se``, an upper bound), the subset part as 0.

    Args:
        values: (G, p) probe values per group.
        sizes: (G,) examples per group.

    Returns:
        (trace, se, probe_se, sample_se), se^2 = probe_se^2 + sample_se^2.
    """
    values = values.double()
    groups, p = values.shape
    ybar = values.mean(1)
    trace = float(ybar.sum())
    if p < 2:
        if groups < 2:
            return trace, math.inf, math.inf, 0.0
        se = math.sqrt(_between(ybar, sizes, n, trace))
        return trace, se, se, 0.0
    w = float(values.var(1, unbiased=True).sum()) / p
    sample_var = 0.0
    if n_population is not None and n < n_population and groups > 1:
        f = n / n_population
        sample_var = max((1 - f) * (_between(ybar, sizes, n, trace) - w), 0.0)
    return trace, math.sqrt(w + sample_var), math.sqrt(w), math.sqrt(sample_var)


def _between(ybar: torch.Tensor, sizes: torch.Tensor, n: int, trace: float) -> float:
    """B = G/(G-1) sum_g (ybar_g - m_g T / n)^2, the spread of the group totals in
    ratio form (:func:`grouped_mean_and_se`)."""
    groups = ybar.shape[0]
    resid = ybar - sizes.double() / n * trace
    return groups / (groups - 1) * float(resid.pow(2).sum())


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
    tapped = _Tapped(objective, names, members) if len(sizes) > 1 else None
    untapped = [n for n in names if tapped is None or n not in tapped.names]
    per_group = _PerGroup(objective, untapped, members)
    round_ = 0
    while want:
        draw = partial(_probes, seed, round_=round_, device=objective.device)
        sums = {n: torch.zeros(len(sizes), k, dtype=torch.float64) for n, k in want.items()}
        this = _Round(want, index, draw, sums, progress)
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
    extra = max(needed * 1.1 - count, count / 2, 4)
    return None, math.ceil(min(extra, max_probes - count))


def _round_sums(
    objective: Objective,
    hvp: _BatchedHvp,
    graphs: Iterable[tuple[int, dict[str, torch.Tensor]]],
    weights: dict[str, torch.Tensor],
    want: dict[str, int],
    index: dict[str, int],
    draw: Callable[..., torch.Tensor],
    n_groups: int,
    progress: Progress | None,
    built: list[tuple[int, dict[str, torch.Tensor]]] | None,
) -> dict[str, torch.Tensor]:
    """One round: each group's summed probe values per layer, shape (G, probes wanted).

    ``built``, when given, collects the graphs so that later rounds reuse them.
    """
    sums = {n: torch.zeros(n_groups, k, dtype=torch.float64) for n, k in want.items()}
    probes: dict[int, dict[str, torch.Tensor]] = {}
    for g, grads in graphs:
        if built is not None:
            built.append((g, grads))
        if g not in probes:  # one probe set per group and round, shared by its batches
            probes[g] = {
                n: draw(index[n], group=g, count=k, shape=tuple(weights[n].shape))
                for n, k in want.items()
            }
        _push_probes(objective, hvp, grads, weights, probes[g], sums, g, progress)
        del grads
    return sums


def _push_probes(
    objective: Objective,
    hvp: _BatchedHvp,
    grads: dict[str, torch.Tensor],
    weights: dict[str, torch.Tensor],
    probes: dict[str, torch.Tensor],
    sums: dict[str, torch.Tensor],
    g: int,
    progress: Progress | None,
) -> None:
    """Add v^T H v of every probe of group ``g`` through one batch's graph to ``sums``."""
    for n, p in probes.items():
        for c in range(0, p.shape[0], _PROBE_CHUNK):
            chunk = p[c : c + _PROBE_CHUNK].to(objective.device, objective.dtype)
            sums[n][g, c : c + chunk.shape[0]] += hvp(n, grads[n], weights[n], chunk)
            if progress is not None:
                progress(chunk.shape[0])


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


def _group_graphs(
    objective: Objective,
    weights: dict[str, torch.Tensor],
    names: list[str],
    members: list[torch.Tensor],
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """(group, first-order gradients with their graph) per batch of each group's local examples."""
    for g, idx in enumerate(members):
        for i in range(0, idx.shape[0], objective.batch_size):
            rows = idx[i : i + objective.batch_size]
            xb = objective.x[rows].to(objective.device, objective.dtype)
            yb = objective.y[rows].to(objective.device)
            loss = objective.loss(weights, xb, yb)
            grads = torch.autograd.grad(loss, [weights[n] for n in names], create_graph=True)
            yield g, dict(zip(names, grads, strict=True))
            # this batch's graph goes before the next is built: one graph at a time
            del loss, grads


@dataclass(frozen=True)
class _Round:
    """One round of probes: the probes wanted per layer, each layer's index (for the
    probe seeds), the probe sampler, the per-group sums it fills and the progress hook."""

    want: dict[str, int]
    index: dict[str, int]
    draw: Callable[..., torch.Tensor]
    sums: dict[str, torch.Tensor]
    progress: Progress | None


class _PerGroup:
    """The layers without taps: one graph per group and batch, kept across rounds when
    the examples fit one batch."""

    def __init__(self, objective: Objective, names: list[str], members: list[torch.Tensor]):
        self.objective, self.names, self.members = objective, names, members
        self.weights = objective.weights()
        self.hvp = _BatchedHvp()
        self.keep = objective.n_local <= objective.batch_size
        self.cached: list[tuple[int, dict[str, torch.Tensor]]] | None = None

    def round(self, r: _Round) -> None:
        """Adds each group's probe values of the wanted layers without taps to ``r.sums``."""
        want, index, draw, sums, progress = r.want, r.index, r.draw, r.sums, r.progress
        rest = {n: k for n, k in want.items() if n in self.names}
        if not rest:
            return
        o = self.objective
        graphs = (
            self.cached
            if self.cached is not None
            else _group_graphs(o, self.weights, self.names, self.members)
        )
        built: list[tuple[int, dict[str, torch.Tensor]]] | None = (
            [] if self.keep and self.cached is None else None
        )
        sums.update(
            _round_sums(
                o,
                self.hvp,
                graphs,
                self.weights,
                rest,
                index,
                draw,
                len(self.members),
                progress,
                built,
            )  # fmt: skip
        )
        if built is not None:
            self.cached = built


# memory the zero taps of one graph may take (G copies of the tapped layers' weights,
# their gradients and products: about 4 times the taps)
_TAP_BYTES = 256 * 2**20


class _Tapped:
    """The layers served by zero per-group taps (:mod:`.taps`): every group's probe
    through one graph per batch, in chunks of layers within ``_TAP_BYTES``."""

    def __init__(self, objective: Objective, names: list[str], members: list[torch.Tensor]):
        self.objective, self.members = objective, members
        modules = weight_modules(objective, names)
        ok = set(tappable(objective, modules)) if modules else set()
        params = dict(objective.model.named_parameters())
        itemsize = torch.empty((), dtype=objective.dtype).element_size()
        per_layer = {n: 4 * len(members) * params[n].numel() * itemsize for n in ok}
        self.names = [n for n in names if n in ok and per_layer[n] <= _TAP_BYTES]
        self.chunks: list[list[str]] = []
        for n in self.names:
            last = self.chunks[-1] if self.chunks else None
            if last is not None and sum(per_layer[m] for m in last) + per_layer[n] <= _TAP_BYTES:
                last.append(n)
            else:
                self.chunks.append([n])
        self.modules = {n: modules[n] for n in self.names}
        self.hvp = _BatchedHvp()
        # one batch and one chunk: the graph is built once and kept across rounds
        self.keep = len(self.chunks) == 1 and objective.n_local <= objective.batch_size
        self.cached: tuple[GroupTaps, list[dict[str, torch.Tensor]]] | None = None

    def round(self, r: _Round) -> None:
        """Adds each group's probe values of the wanted tapped layers to ``r.sums``."""
        want, index, draw, sums, progress = r.want, r.index, r.draw, r.sums, r.progress
        groups = len(self.members)
        for chunk in self.chunks:
            wanted = [n for n in chunk if n in want]
            if not wanted:
                continue
            taps, graphs = self._graphs(chunk)
            probes = {
                n: torch.stack(
                    [
                        draw(index[n], group=g, count=want[n], shape=tuple(taps.taps[n].shape[1:]))
                        for g in range(groups)
                    ]
                )
                for n in wanted
            }
            for grads in graphs:
                for n in wanted:
                    tap = taps.taps[n]
                    for c in range(0, want[n], _PROBE_CHUNK):
                        # (p, G, *shape): one vector per group for each probe
                        p = probes[n][:, c : c + _PROBE_CHUNK].transpose(0, 1)
                        p = p.to(tap.device, tap.dtype)
                        values = self.hvp(n, grads[n], tap, p, groups=True)
                        sums[n][:, c : c + p.shape[0]] += values.t()
                        if progress is not None:
                            progress(p.shape[0] * groups)
                del grads  # free this batch's graph before the next is built

    def _graphs(self, chunk: list[str]) -> tuple[GroupTaps, Iterable[dict[str, torch.Tensor]]]:
        if self.cached is not None:
            return self.cached
        taps = GroupTaps(self.objective, {n: self.modules[n] for n in chunk}, len(self.members))
        graphs = taps.graphs(self.members)
        if self.keep:
            self.cached = (taps, list(graphs))
            return self.cached
        return taps, graphs
