"""The baselines wciaudit's trace engine is compared with.

- the plain per-layer loop: the engine's estimator done naively: per probe and per
  random group of the examples (one independent vector per group, as the engine draws)
  a fresh forward + ``autograd.grad(create_graph=True)`` and one Hessian-vector product,
  the probe restricted to one layer;
- the whole-model shared probe: v_k . (Hv)_k read per layer from one full product;
- PyHessian's ``hessian(...).trace()`` (whole-model total), when it is installed.

Probes are Rademacher, drawn with the library's :func:`~wciaudit.curvature.hutchinson.rademacher`
from a seeded CPU generator, so the baselines sample the same distribution as the engine.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from common import MIN_PROBES, TOL, PeakMemory, Row, Setup, Stopwatch, next_round, stats_of
from torch import nn
from torch.func import functional_call

from wciaudit.curvature.groups import GROUPS, group_count, probe_groups
from wciaudit.curvature.hutchinson import first_round, rademacher


def layer_weights(setup: Setup) -> dict[str, torch.Tensor]:
    """Detached copies of the layer weights that require grad (the model is untouched)."""
    params = dict(setup.net.named_parameters())
    return {n: params[n].detach().requires_grad_(True) for n in setup.names}


def probe(shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> torch.Tensor:
    """One float32 Rademacher probe on ``device``."""
    return rademacher(shape, g).to(device, torch.float32)


def _batches(setup: Setup) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, setup.x.shape[0], setup.batch_size):
        yield (
            setup.x[i : i + setup.batch_size].to(setup.device),
            setup.y[i : i + setup.batch_size].to(setup.device),
        )


def group_rows(setup: Setup) -> list[torch.Tensor]:
    """The engine's random groups of the Hessian samples (seed 0): each probe is one
    independent vector per group, so the baselines draw the engine's distribution."""
    n = setup.x.shape[0]
    assignment = probe_groups(n, GROUPS, 0)
    return [torch.nonzero(assignment == g).flatten() for g in range(group_count(n, GROUPS))]


def group_probe(setup: Setup, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """One probe of the grouped design: a Rademacher vector per group, (G, *shape)."""
    return probe((len(group_rows(setup)), *shape), g, setup.device)


def plain_probe(setup: Setup, w: dict[str, torch.Tensor], name: str, v: torch.Tensor) -> float:
    """sum_g v_g^T H_g,kk v_g for a grouped probe v (G, *shape), naively: per group a
    fresh forward, ``grad(create_graph=True)`` and one Hessian-vector product."""
    total = 0.0
    n = setup.x.shape[0]
    for rows, vg in zip(group_rows(setup), v, strict=True):
        for i in range(0, rows.shape[0], setup.batch_size):
            part = rows[i : i + setup.batch_size]
            xb, yb = setup.x[part].to(setup.device), setup.y[part].to(setup.device)
            logits = functional_call(setup.net, {name: w[name]}, (xb,))
            loss = F.cross_entropy(logits, yb, reduction="sum") / n
            (g,) = torch.autograd.grad(loss, w[name], create_graph=True)
            (hv,) = torch.autograd.grad(g, w[name], grad_outputs=vg)
            total += float((hv * vg).sum())
    return total


def plain_pilot(
    setup: Setup, w: dict[str, torch.Tensor], probes: int, g: torch.Generator
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """``probes`` timed plain-loop probes per layer: their values and seconds per probe."""
    values: dict[str, list[float]] = {}
    cost: dict[str, float] = {}
    for name in setup.names:
        shape = tuple(w[name].shape)
        with Stopwatch(setup.device) as sw:
            values[name] = [
                plain_probe(setup, w, name, group_probe(setup, shape, g)) for _ in range(probes)
            ]
        cost[name] = sw.seconds / probes
    return values, cost


def plain_stop_rule(
    setup: Setup, w: dict[str, torch.Tensor], name: str, seed: int, max_probes: int
) -> list[float]:
    """The engine's stop rule, run with the plain loop: its first round
    (``first_round(MIN_PROBES, G, cap)``), then rounds
    of the probes the running variance asks for, until SE <= tol |mean| or the cap."""
    g = torch.Generator().manual_seed(seed)
    shape = tuple(w[name].shape)
    values: list[float] = []
    want = first_round(MIN_PROBES, len(group_rows(setup)), max_probes)
    while want > 0:
        values += [plain_probe(setup, w, name, group_probe(setup, shape, g)) for _ in range(want)]
        _, want = next_round(values, tol=TOL, max_probes=max_probes)
    return values


def shared_probe(setup: Setup, w: dict[str, torch.Tensor], vs: list[torch.Tensor]) -> list[float]:
    """One whole-model probe: v_k . (Hv)_k per layer, from one full Hessian-vector product."""
    out = [0.0] * len(vs)
    n = setup.x.shape[0]
    wl = [w[name] for name in setup.names]
    for xb, yb in _batches(setup):
        loss = F.cross_entropy(functional_call(setup.net, w, (xb,)), yb, reduction="sum") / n
        grads = torch.autograd.grad(loss, wl, create_graph=True)
        hvs = torch.autograd.grad(grads, wl, grad_outputs=vs, allow_unused=True)
        for k, (hv, v) in enumerate(zip(hvs, vs, strict=True)):
            out[k] += 0.0 if hv is None else float((hv * v).sum())
    return out


def shared_pilot(
    setup: Setup, w: dict[str, torch.Tensor], probes: int, g: torch.Generator
) -> tuple[dict[str, list[float]], float]:
    """``probes`` whole-model probes: per-layer values and seconds per probe."""
    values: dict[str, list[float]] = {n: [] for n in setup.names}
    with Stopwatch(setup.device) as sw:
        for _ in range(probes):
            vs = [probe(tuple(w[n].shape), g, setup.device) for n in setup.names]
            for n, val in zip(setup.names, shared_probe(setup, w, vs), strict=True):
                values[n].append(val)
    return values, sw.seconds / probes


def pyhessian_rows(setup: Setup, probes: int, seed: int, extra: dict) -> list[Row]:
    """PyHessian's trace of the layer-weight Hessian, measured and extrapolated to 5%.

    Writes a one-line summary to ``extra["pyhessian"]``; no rows when not installed.
    """
    try:
        from pyhessian import hessian as PyHessian  # noqa: N812
    except ImportError:
        extra["pyhessian"] = "not installed (pip install pyhessian)"
        return []
    net, dev = setup.net, setup.device
    layer_set = set(setup.names)
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    # PyHessian differentiates every parameter that requires grad: keep the layers only,
    # so its total is sum_k Tr(H_kk) over the same layers
    for n, p in net.named_parameters():
        p.requires_grad_(n in layer_set)
    try:
        torch.manual_seed(seed)  # PyHessian draws its probes from the global RNG
        x, y = setup.x.to(dev), setup.y.to(dev)
        with PeakMemory(dev) as mem, Stopwatch(dev) as sw:
            hc = PyHessian(net, nn.CrossEntropyLoss(), data=(x, y), cuda=dev.type == "cuda")
            t_graph = sw.seconds_so_far()
            vals = hc.trace(maxIter=probes, tol=1e-3)
        del hc
    finally:
        for n, p in net.named_parameters():
            p.grad = None  # PyHessian leaves graph-carrying .grad behind
            p.requires_grad_(flags[n])
    n_vals, mean, var = stats_of(vals)
    sd = math.sqrt(var) if n_vals > 1 else math.inf
    rse = sd / math.sqrt(n_vals) / abs(mean)
    per_probe = (sw.seconds - t_graph) / n_vals
    need = max(float(n_vals), (sd / (TOL * abs(mean))) ** 2)
    ref = extra.get("exact_sum") or (
        sum(setup.exact.values()) if setup.exact else extra["pilot_sum"]
    )
    extra["pyhessian"] = (
        f"total {mean:.4g} +- {sd / math.sqrt(n_vals):.2g} over {n_vals} probes "
        f"(own stop rule: running mean moved < 1e-3), sum of per-layer traces {ref:.4g}"
    )
    err = abs(mean - ref) / abs(ref) if setup.exact else None
    return [
        Row(
            setup.key,
            "pyhessian trace()",
            sw.seconds,
            "measured",
            n_vals,
            rse,
            err,
            mem.mib,
            "whole-model total only",
        ),
        Row(
            setup.key,
            "pyhessian to 5% (total)",
            t_graph + need * per_probe,
            "extrapolated",
            int(math.ceil(need)),
            TOL,
            None,
            mem.mib,
            "total only, not per layer",
        ),
    ]
