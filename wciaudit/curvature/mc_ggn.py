"""Monte Carlo Gauss-Newton traces with sampled labels (the Fisher form of the GGN).

For softmax cross-entropy on logits z_i = f(x_i; w), p_i = softmax(z_i), the gradient
of CE(z_i, c) with respect to z_i is p_i - e_c, and for c ~ p_i

    E_c[(e_c - p_i)(e_c - p_i)^T] = diag(p_i) - p_i p_i^T,

the Hessian of the cross-entropy in the logits. So with g_ic = grad_{W_k} CE(f(x_i), c)
= J_ik^T (p_i - e_c),

    Tr(GGN_kk) = (1/n) sum_i E_{c ~ p_i} ||g_ic||^2

(Martens 2014, "New insights and perspectives on the natural gradient method"; the
sampled-label Fisher of Kunstner, Hennig, Balles 2019). k labels per example cost k
backward passes per batch whatever the number of classes C is, against C for the
exact route (:mod:`.ggn`); the mean of the k squared norms is unbiased for Tr(GGN_kk),
which is Tr(H_kk) where the residual vanishes (:func:`.ggn.residual_vanishes`).

Standard error, two-stage (examples, then labels): with v_i the mean of example i's k
values, s_b^2 the sample variance of the v_i, s_wi^2 the sample variance of example
i's k values, w = mean_i s_wi^2 / k, and f = n / N the sampled fraction of the split
(f = 1 when the examples are the whole split),

    Var(T) = (1 - f) s_b^2 / n + f w / n  =  w / n  +  (1 - f) (s_b^2 - w) / n,

the first term of the right-hand form being the label-sampling part (``probe_se``),
the second the Hessian-subset part (``sample_se``, clipped at 0).

Linear and Conv2d layers called once per forward get their per-example squared
gradient norms from the layer input and output gradient
(:func:`.ggn.per_example_sq_norms`), one backward per label draw shared by all of
them; other layers take per-example gradients with ``vmap(grad(...))``.

Example:
    >>> import torch
    >>> from wciaudit.curvature.objective import Objective
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    >>> obj = Objective(net, torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,)),
    ...                 ["0.weight", "2.weight"], 8, torch.device("cpu"))
    >>> [e.method for e in mc_ggn_traces(obj, k_labels=4, seed=0, memory_bytes=2**20)]
    ['mc-ggn', 'mc-ggn']
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from .estimate import TraceEstimate
from .ggn import hookable, output_gradients, per_example_sq_norms
from .groups import share_group_count, share_groups
from .growth import more_probes, short_of
from .memory import chunk_examples
from .objective import Objective
from .standard_errors import two_stage_se

Progress = Callable[[int], None]


def sample_labels(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Labels c ~ p per row by inverse CDF of uniforms ``u`` (n, k) -> (n, k) int64."""
    cdf = torch.cumsum(p.double(), dim=1)
    cdf[:, -1] = 1.0  # rounding must not leave mass above the last class
    return torch.searchsorted(cdf, u.to(cdf.device, cdf.dtype).contiguous()).clamp_(
        max=p.shape[1] - 1
    )


def mc_ggn_traces(
    objective: Objective,
    names: list[str] | None = None,
    *,
    k_labels: int,
    seed: int,
    memory_bytes: int,
    tol: float | None = None,
    max_labels: int | None = None,
    progress: Progress | None = None,
) -> list[TraceEstimate]:
    """Unbiased Tr(GGN_kk) per layer from ``k_labels`` sampled labels per example.

    Args:
        objective: model, fixed examples, layers; ``objective.n_population`` sets the
            finite-population factor of the Hessian-subset part of the SE.
        names: layers to estimate (default all of ``objective.names``).
        k_labels: labels drawn per example (>= 2, so the label variance is measured).
        tol, max_labels: when both are given, more labels are drawn (all layers share
            them) until every layer's relative SE is <= ``tol``, as far as labels can
            bring it there (the Hessian-subset part does not shrink with labels), up to
            ``max_labels`` per example. A layer then reports ``stop_reason`` ``tol`` or
            ``cap``; with ``tol`` alone it only says whether the target was met.
        seed: label seed; labels come from a CPU generator, one uniform per example
            and draw, so batching does not change them.
        memory_bytes: budget for one chunk of per-example gradients (non-hookable layers).
        progress: called with the number of examples done after each batch.

    Returns:
        One :class:`TraceEstimate` per layer (``method="mc-ggn"``, ``probes=k_labels``).
    """
    if k_labels < 2:
        raise ValueError(
            f"k_labels must be >= 2 (the label variance needs two draws), got {k_labels}"
        )
    names = list(objective.names if names is None else names)
    g = torch.Generator(device="cpu")
    g.manual_seed(seed * 1_000_003 + 77)
    values: dict[str, torch.Tensor] | None = None
    history: dict[str, list[list[float]]] = {n: [] for n in names}
    draws = k_labels
    while True:
        uniforms = torch.rand((objective.n_local, draws), generator=g, dtype=torch.float64)
        new = per_example_values(
            objective, names, uniforms, memory_bytes=memory_bytes, progress=progress
        )
        values = new if values is None else {n: torch.cat([values[n], new[n]], 1) for n in names}
        estimates = [_estimate(objective, n, values[n], tol, seed) for n in names]
        for e in estimates:
            history[e.name].append([e.probes, e.trace, e.se])
        k = int(values[names[0]].shape[1]) if names else 0
        draws = _more_labels(estimates, k, tol, max_labels)
        if draws == 0:
            break
    for e in estimates:
        e.history = history[e.name]
    return estimates


def _more_labels(
    estimates: list[TraceEstimate], k: int, tol: float | None, max_labels: int | None
) -> int:
    """Extra labels per example that bring every layer's label part within ``tol``."""
    if tol is None or max_labels is None or k >= max_labels:
        return 0
    needed = 0.0
    for e in estimates:
        target = (tol * abs(e.trace)) ** 2 - e.sample_se**2
        if e.se <= tol * abs(e.trace) or target <= 0:
            continue  # met, or labels cannot meet it
        needed = max(needed, k * e.probe_se**2 / target)
    if not short_of(k, needed):
        return 0
    return more_probes(k, needed, max_labels, least=0, half=math.floor)


def per_example_values(
    objective: Objective,
    names: list[str],
    uniforms: torch.Tensor,
    *,
    memory_bytes: int,
    progress: Progress | None = None,
) -> dict[str, torch.Tensor]:
    """||grad_{W_k} CE(f(x_i), c_ij)||^2 for labels c_ij drawn by ``uniforms`` (n, k).

    Returns:
        Per layer an (n_local, k) float64 CPU tensor, divided by nothing (per example).
    """
    modules = _modules(objective, hookable(objective, names))
    out = {n: torch.zeros(uniforms.shape, dtype=torch.float64) for n in names}
    fallback: set[str] = set(names) - set(modules)
    start = 0
    for xb, _ in objective.batches():
        u = uniforms[start : start + xb.shape[0]]
        once = _by_backward(objective, modules, xb, u, out, start) if modules else set()
        fallback |= set(modules) - once
        start += xb.shape[0]
        if progress is not None:
            progress(xb.shape[0])
    if fallback:
        _by_vmap(objective, [n for n in names if n in fallback], uniforms, out, memory_bytes)
    return out


def _modules(objective: Objective, names: list[str]) -> dict[str, nn.Module]:
    wanted = set(names)
    out = {}
    for module_name, module in objective.model.named_modules():
        pname = f"{module_name}.weight" if module_name else "weight"
        if pname in wanted:
            out[pname] = module
    return out


def _by_backward(
    objective: Objective,
    modules: dict[str, nn.Module],
    xb: torch.Tensor,
    u: torch.Tensor,
    out: dict[str, torch.Tensor],
    start: int,
) -> set[str]:
    """One backward per label draw, differentiating with respect to the layers' inputs
    (:func:`.ggn.output_gradients`) so the hooks read each layer's output gradient and
    no weight gradient is formed. Returns the layers called exactly once (the others go
    to the vmap route)."""
    weights = objective.weights(requires_grad=False)
    acts: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}
    stops: list[torch.Tensor] = []

    def forward_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1
            acts[name] = inputs[0].detach()
            stops.append(inputs[0])
            if output.requires_grad:
                output.register_hook(lambda gr: grads.__setitem__(name, gr.detach()))

        return hook

    handles = [m.register_forward_hook(forward_hook(n)) for n, m in modules.items()]
    try:
        xb = xb.detach().requires_grad_(True)
        z = objective.logits(weights, xb)
        p = torch.softmax(z.detach(), dim=1)
        usable = [n for n in modules if calls.get(n) == 1]
        labels = sample_labels(p, u)
        for j in range(labels.shape[1]):
            cot = p - F.one_hot(labels[:, j].to(z.device), p.shape[1]).to(z.dtype)
            grads.clear()
            output_gradients(z, cot, stops, xb)
            for n in usable:
                sq = per_example_sq_norms(modules[n], acts[n], grads[n])
                out[n][start : start + xb.shape[0], j] = sq.double().cpu()
    finally:
        for h in handles:
            h.remove()
    return set(usable)


def _by_vmap(
    objective: Objective,
    names: list[str],
    uniforms: torch.Tensor,
    out: dict[str, torch.Tensor],
    memory_bytes: int,
) -> None:
    model = objective.model
    weights = {n: w for n, w in objective.weights(requires_grad=False).items() if n in names}
    numel = sum(w.numel() for w in weights.values())
    chunk = chunk_examples(objective, 1, numel, memory_bytes)

    def ce_one(w: dict[str, torch.Tensor], xi: torch.Tensor, ci: torch.Tensor) -> torch.Tensor:
        z = functional_call(model, w, (xi.unsqueeze(0),))
        return F.cross_entropy(z, ci.unsqueeze(0))

    grad_fn = vmap(grad(ce_one), in_dims=(None, 0, 0))
    start = 0
    for xb, _ in objective.batches():
        with torch.no_grad():
            p = torch.softmax(objective.logits(weights, xb), dim=1)
        labels = sample_labels(p, uniforms[start : start + xb.shape[0]]).to(xb.device)
        for c in range(0, xb.shape[0], chunk):
            xc = xb[c : c + chunk]
            for j in range(labels.shape[1]):
                gr = grad_fn(weights, xc, labels[c : c + chunk, j])
                for n in names:
                    out[n][start + c : start + c + xc.shape[0], j] = (
                        gr[n].detach().flatten(1).pow(2).sum(1).double().cpu()
                    )
                del gr
        start += xb.shape[0]


def _estimate(
    objective: Objective, name: str, values: torch.Tensor, tol: float | None, seed: int
) -> TraceEstimate:
    k = values.shape[1]
    v = values.mean(1)
    within = values.var(1, correction=1) / k
    n = objective.n
    # each fine group's share of the trace (:func:`.groups.share_groups`), to pair two runs
    groups = share_group_count(n)
    offset = objective.offset
    group_of = share_groups(n, seed)[offset : offset + v.shape[0]]
    shares = torch.zeros(groups, dtype=torch.float64).index_add_(0, group_of, v.double().cpu() / n)
    sums = objective.reduce(
        torch.cat([torch.stack([v.sum(), v.pow(2).sum(), within.sum()]).double().cpu(), shares])
    )
    trace = float(sums[0]) / n
    se, probe_se, sample_se = two_stage_se(
        float(sums[0]), float(sums[1]), float(sums[2]), n, objective.n_population
    )
    covers = ("sampled-labels",)
    if objective.n_population is not None and objective.n_population > n:
        covers += ("hessian-subset",)
    converged = tol is None or se <= tol * abs(trace)
    return TraceEstimate(
        name=name,
        trace=trace,
        se=se,
        probes=k,
        method="mc-ggn",
        converged=converged,
        stop_reason="tol" if converged else "cap",
        probe_se=probe_se,
        sample_se=sample_se,
        se_covers=covers,
        group_shares=tuple(sums[3:].tolist()),
    )
