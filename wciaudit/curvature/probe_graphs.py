"""The graphs Hutchinson's probes go through: two engines behind one interface.

Each round of :func:`.hutchinson.hutchinson_traces` asks every engine for each group's
summed probe values of the layers it serves (``engine.round(Round(...))``):

- :class:`TappedGraphs`: layers whose every use is a Linear or zero-padded Conv2d call
  with the examples on the input's first axis get zero per-group taps (:mod:`.taps`):
  one graph per batch serves every group's probe at once;
- :class:`PerGroupGraphs`: every other layer (functional calls, other modules, a
  weight whose uses the hooks cannot see) takes one graph per group and batch.

They are not unified: the taps are the fast engine (one backward pass per probe for
all G groups instead of G small ones, the difference benchmarks/trace_speed.py
measures), but they need the module structure above; the per-group graphs need
nothing but autograd, so they serve the layers the taps cannot. Both push their
probes through :class:`.hvp.BatchedHvp`, keep their graphs across rounds where the
examples fit one batch, and free each batch's graph before the next is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from .ggn import weight_modules
from .hvp import BatchedHvp
from .objective import Objective
from .taps import GroupTaps, tappable

Progress = Callable[[int], None]
# probes pushed through one batched product
_PROBE_CHUNK = 16


def _round_sums(
    objective: Objective,
    hvp: BatchedHvp,
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
    hvp: BatchedHvp,
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
class Round:
    """One round of probes: the probes wanted per layer, each layer's index (for the
    probe seeds), the probe sampler, the per-group sums it fills and the progress hook."""

    want: dict[str, int]
    index: dict[str, int]
    draw: Callable[..., torch.Tensor]
    sums: dict[str, torch.Tensor]
    progress: Progress | None


class PerGroupGraphs:
    """The layers without taps: one graph per group and batch, kept across rounds when
    the examples fit one batch."""

    def __init__(self, objective: Objective, names: list[str], members: list[torch.Tensor]):
        self.objective, self.names, self.members = objective, names, members
        self.weights = objective.weights()
        self.hvp = BatchedHvp()
        self.keep = objective.n_local <= objective.batch_size
        self.cached: list[tuple[int, dict[str, torch.Tensor]]] | None = None

    def round(self, r: Round) -> None:
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


class TappedGraphs:
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
        self.hvp = BatchedHvp()
        # one batch and one chunk: the graph is built once and kept across rounds
        self.keep = len(self.chunks) == 1 and objective.n_local <= objective.batch_size
        self.cached: tuple[GroupTaps, list[dict[str, torch.Tensor]]] | None = None

    def round(self, r: Round) -> None:
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
