"""Hutch++ per diagonal block (Meyer, Musco, Musco, Woodruff 2021, "Hutch++: optimal
stochastic trace estimation").

For one layer's block H = H_kk and a Rademacher sketch S (numel x s):

    Q = orth(H S),   Tr(H) = Tr(Q^T H Q) + Tr((I - QQ^T) H (I - QQ^T))

The first term is computed exactly from s more products (H Q); the second, the trace
of the deflated block, by Hutchinson with probes g' = (I - QQ^T) g. Where the block
has a few dominant eigenvalues (they carry most of the Rademacher variance
2 (||H||_F^2 - sum H_ii^2)) deflation removes them and the residual probes are far
less noisy.

Standard error: given Q the estimate is the exact first term plus an unbiased mean of
residual probe values, and its expectation given Q is Tr(H) for every Q, so
Var = E[Var(. | Q)]: the residual values' sample sd / sqrt(n) is the SE, and it covers
the sketch as well. Cost: 2 s + n products against Hutchinson's n.

Example:
    >>> import torch
    >>> from wciaudit.curvature.objective import Objective
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    >>> obj = Objective(net, torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,)),
    ...                 ["0.weight"], 8, torch.device("cpu"))
    >>> [e.method for e in hutchpp_traces(obj, sketch=2, tol=0.05, min_probes=10, max_probes=20, seed=0)]
    ['hutch++']
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..model import no_tf32
from .estimate import TraceEstimate
from .growth import more_probes
from .hutchinson import rademacher
from .hvp import BatchedHvp
from .objective import Objective
from .standard_errors import mean_and_se, se_upper_factor


def hutchpp_traces(
    objective: Objective,
    names: list[str] | None = None,
    *,
    sketch: int = 10,
    tol: float,
    min_probes: int,
    max_probes: int,
    seed: int,
) -> list[TraceEstimate]:
    """Per-layer Hutch++ estimates of Tr(H_kk) with a valid standard error.

    Args:
        objective: model, fixed examples, layers.
        names: layers (default all of ``objective.names``).
        sketch: s, the sketch width (2 s products go to the low-rank part).
        tol, min_probes, max_probes: residual probes are added in rounds until the
            relative SE is <= ``tol`` or ``max_probes`` residual probes.
        seed: sketch and probe seed (CPU generator).

    Returns:
        One :class:`TraceEstimate` per layer (``method="hutch++"``, ``probes`` = the
        residual probes; 2 ``sketch`` more products were spent).
    """
    # fused attention kernels (flash / memory-efficient SDPA) have no double backward;
    # the math kernel computes the same attention and differentiates twice
    # TF32 off: cuDNN's default convolutions round to ~1e-3 (:func:`..model.no_tf32`)
    with sdpa_kernel([SDPBackend.MATH]), no_tf32():
        return _hutchpp_traces(objective, names, sketch, tol, min_probes, max_probes, seed)


def _hutchpp_traces(
    objective: Objective,
    names: list[str] | None,
    sketch: int,
    tol: float,
    min_probes: int,
    max_probes: int,
    seed: int,
) -> list[TraceEstimate]:
    names = list(objective.names if names is None else names)
    weights = objective.weights()
    hvp = BatchedHvp()
    out = []
    for li, n in enumerate(names):
        g = torch.Generator(device="cpu")
        g.manual_seed(seed * 7_919 + li * 104_729 + 31)
        block = _Block(objective, weights, n, hvp)
        out.append(_one_layer(block, n, g, sketch, tol, min_probes, max_probes))
    return out


def _one_layer(
    block: _Block,
    name: str,
    g: torch.Generator,
    sketch: int,
    tol: float,
    min_probes: int,
    max_probes: int,
) -> TraceEstimate:
    """Hutch++ on one layer's block: the sketch, its exact part, then residual probes
    in rounds (:func:`.growth.more_probes`) until the SE meets ``tol`` or the cap."""
    shape, numel = block.shape, block.numel
    s = min(sketch, numel)
    hs = block(rademacher((s, *shape), g).double()).reshape(s, numel)
    # Q, the projections and the probe values stay in float64 on the CPU, whatever
    # the model's dtype: only the products run in it (:class:`_Block` casts)
    q, _ = torch.linalg.qr(hs.T)  # (numel, s)
    hq = block(q.T.reshape(s, *shape)).reshape(s, numel)
    low_rank = float((hq * q.T).sum())
    values: list[float] = []
    history: list[list[float]] = []
    want = min(min_probes, max_probes)
    while want > 0:
        probes = rademacher((want, numel), g).double()
        probes = probes - (probes @ q) @ q.T
        hv = block(probes.reshape(want, *shape)).reshape(want, numel)
        values.extend((hv * probes).sum(1).tolist())
        mean, se = mean_and_se(values)
        history.append([len(values), low_rank + mean, se])
        total = abs(low_rank + mean)
        # the SE at the upper end of its 90 % interval (n - 1 degrees of freedom): a rule
        # that stops on the SE as measured stops early where it came out small
        if se * se_upper_factor(len(values) - 1) <= tol * total or len(values) >= max_probes:
            break
        needed = math.inf if total == 0 else (se * math.sqrt(len(values)) / (tol * total)) ** 2
        want = more_probes(len(values), needed, max_probes, half=math.floor)
    mean, se = mean_and_se(values)
    trace = low_rank + mean
    converged = se <= tol * abs(trace)
    return TraceEstimate(
        name=name,
        trace=trace,
        se=se,
        probes=len(values),
        method="hutch++",
        converged=converged,
        stop_reason="tol" if converged else "cap",
        history=history,
        probe_se=se,
        se_covers=("probes",),
    )


#: directions pushed through one batched product (as Hutchinson's probe chunks)
_CHUNK = 16


class _Block:
    """v -> H_kk v for a stack of directions (m, *shape), summed over data batches,
    through :class:`.hvp.BatchedHvp`; the gradient graph is kept across calls when the
    examples fit one batch (sketch, its products and every probe round reuse it)."""

    def __init__(
        self, objective: Objective, weights: dict[str, torch.Tensor], name: str, hvp: BatchedHvp
    ) -> None:
        self.objective, self.weight, self.hvp = objective, weights[name], hvp
        self.weights, self.name = weights, name
        self.shape, self.numel = tuple(self.weight.shape), self.weight.numel()
        self.kept: list[torch.Tensor] | None = None

    def _grads(self) -> Iterator[torch.Tensor]:
        if self.kept is not None:
            yield from self.kept
            return
        o = self.objective
        keep = [] if o.n_local <= o.batch_size else None
        for xb, yb in o.batches():
            loss = o.loss(self.weights, xb, yb)
            (grad,) = torch.autograd.grad(loss, self.weight, create_graph=True)
            if keep is not None:
                keep.append(grad)
            yield grad
            del loss, grad  # one graph at a time
        self.kept = keep

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        o = self.objective
        v = v.to(o.device, o.dtype)
        total = torch.zeros(v.shape, dtype=torch.float64)
        for grad in self._grads():
            for c in range(0, v.shape[0], _CHUNK):
                hv = self.hvp.products(grad, self.weight, v[c : c + _CHUNK])
                total[c : c + hv.shape[0]] += hv.double().cpu()
        return o.reduce(total)
