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
- rounds: every layer first gets ``min_probes``; after each round a layer stops when
  its relative standard error is <= ``tol`` (``stop_reason="tol"``) or at
  ``max_probes`` (``"cap"``); the others get the probes their running variance says
  they need (at least half again what they have), so probes go where the error is.

The estimate of a layer is the plain mean of all its probe values; its standard error
is the sample sd / sqrt(n). Probes are drawn from a CPU generator seeded by
(seed, layer index, round), so results do not depend on the device.

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

import torch

from .estimate import TraceEstimate, mean_and_se
from .objective import Objective

Progress = Callable[[int], None]
_PROBE_CHUNK = 16


def rademacher(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Entries +-1 with probability 1/2 each, drawn on the CPU."""
    return torch.randint(0, 2, shape, generator=generator, dtype=torch.int8).mul_(2).sub_(1)


def _probes(seed: int, layer: int, round_: int, count: int, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator(device="cpu")
    g.manual_seed((seed * 7_919 + layer * 104_729 + round_ * 15_485_863 + 1) % (2**63 - 1))
    return rademacher((count, *shape), g)


class _BatchedHvp:
    """v^T H_kk v for a stack of probes through one double-backward graph.

    Two ways give the same values: all probes at once (``is_grads_batched``, a vmap
    over the backward) or one product per probe. Batching pays for Linear weights and
    on GPUs; on a CPU the batched convolution backward measured 2-3x slower than the
    loop (benchmarks/trace_speed.py), so there convolutions loop. The rule depends on
    the layer and device only, never on timings, so runs stay repeatable.
    """

    def __init__(self) -> None:
        self.batched_ok = True

    def __call__(self, name: str, grad_k: torch.Tensor, weight_k: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
        batched = (
            self.batched_ok and probes.shape[0] > 1 and (weight_k.dim() == 2 or weight_k.device.type == "cuda")
        )
        out = self._batched(grad_k, weight_k, probes) if batched else None
        return out if out is not None else self._loop(grad_k, weight_k, probes)

    def _batched(self, grad_k: torch.Tensor, weight_k: torch.Tensor, probes: torch.Tensor) -> torch.Tensor | None:
        try:
            (hv,) = torch.autograd.grad(
                grad_k, weight_k, grad_outputs=probes, is_grads_batched=True,
                retain_graph=True, allow_unused=True,
            )
        except RuntimeError:
            # an op without a vmap batching rule: one product per probe from now on
            self.batched_ok = False
            return None
        if hv is None:
            return torch.zeros(probes.shape[0], dtype=torch.float64)
        return (hv * probes).flatten(1).sum(1).double().cpu()

    @staticmethod
    def _loop(grad_k: torch.Tensor, weight_k: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
        out = []
        for v in probes:
            (hv,) = torch.autograd.grad(grad_k, weight_k, grad_outputs=v, retain_graph=True, allow_unused=True)
            out.append(0.0 if hv is None else float((hv * v).sum()))
        return torch.tensor(out, dtype=torch.float64)


def hutchinson_traces(
    objective: Objective,
    *,
    tol: float = 0.05,
    max_probes: int = 200,
    min_probes: int = 10,
    seed: int = 0,
    progress: Progress | None = None,
    names: list[str] | None = None,
) -> list[TraceEstimate]:
    """Per-layer Hutchinson estimates of Tr(H_kk) with standard errors.

    Args:
        objective: model, fixed examples, layers.
        tol: stop a layer when SE / |mean| <= tol.
        max_probes: probe cap per layer.
        min_probes: probes per layer in the first round.
        seed: probe seed.
        progress: called with the number of probes done after each layer-batch.
        names: subset of ``objective.names`` to estimate (default all).

    Returns:
        One :class:`TraceEstimate` per layer, in the order of ``names``.
    """
    names = list(objective.names if names is None else names)
    index = {n: objective.names.index(n) for n in names}
    weights = objective.weights()
    values: dict[str, list[float]] = {n: [] for n in names}
    history: dict[str, list[list[float]]] = {n: [] for n in names}
    stop: dict[str, str] = {}
    hvp = _BatchedHvp()
    want = {n: min(min_probes, max_probes) for n in names}
    cached_graph: tuple | None = None
    single_batch = objective.n_local <= objective.batch_size
    round_ = 0
    while want:
        probes = {
            n: _probes(seed, index[n], round_, k, tuple(weights[n].shape)) for n, k in want.items()
        }
        sums = {n: torch.zeros(k, dtype=torch.float64) for n, k in want.items()}
        for xb, yb in _graph_batches(objective, single_batch, cached_graph):
            if cached_graph is not None:
                grads = cached_graph
            else:
                loss = objective.loss(weights, xb, yb)
                grads = dict(zip(names, torch.autograd.grad(loss, [weights[n] for n in names], create_graph=True), strict=True))
                if single_batch:
                    cached_graph = grads
            for n in want:
                p = probes[n]
                for c in range(0, p.shape[0], _PROBE_CHUNK):
                    chunk = p[c : c + _PROBE_CHUNK].to(objective.device, objective.dtype)
                    sums[n][c : c + chunk.shape[0]] += hvp(n, grads[n], weights[n], chunk)
                    if progress is not None:
                        progress(chunk.shape[0])
            if not single_batch:
                del grads
        # one collective per round: every process gets the same probe values
        flat = objective.reduce(torch.cat([sums[n] for n in want]))
        sums = dict(zip(want, torch.split(flat, list(want.values())), strict=True))
        next_want: dict[str, int] = {}
        for n in want:
            values[n].extend(sums[n].tolist())
            mean, se = mean_and_se(values[n])
            count = len(values[n])
            history[n].append([count, mean, se])
            if se <= tol * abs(mean):
                stop[n] = "tol"
            elif count >= max_probes:
                stop[n] = "cap"
            else:
                sd = se * math.sqrt(count)
                needed = math.inf if mean == 0 else (sd / (tol * abs(mean))) ** 2
                extra = max(needed * 1.1 - count, count / 2, 4)
                next_want[n] = int(min(math.ceil(extra), max_probes - count))
        want = next_want
        round_ += 1
    out = []
    for n in names:
        mean, se = mean_and_se(values[n])
        out.append(
            TraceEstimate(
                name=n, trace=mean, se=se, probes=len(values[n]), method="hutchinson",
                converged=stop[n] == "tol", stop_reason=stop[n], history=history[n],
            )
        )
    return out


def _graph_batches(objective: Objective, single_batch: bool, cached: tuple | None):
    if single_batch and cached is not None:
        yield None, None
        return
    yield from objective.batches()
