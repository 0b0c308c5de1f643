"""Exact diagonal-block traces through the Gauss-Newton decomposition (Schraudolph 2002).

For cross-entropy on logits z_i = f(x_i; w), with p_i = softmax(z_i) and
J_ik = dz_i / dW_k (C x n_k), the diagonal Hessian block splits as

    H_kk = (1/N) sum_i J_ik^T (diag(p_i) - p_i p_i^T) J_ik  +  R_kk,
    R_kk = (1/N) sum_i sum_c (p_ic - [y_i = c]) d^2 z_ic / dW_k^2.

When the network is piecewise linear in W_k alone (ReLU, max-pool, eval-mode
BatchNorm; no GELU/SiLU/softmax attention/LayerNorm after W_k, and W_k used once),
d^2 z / dW_k^2 = 0 almost everywhere, so R_kk = 0 and

    Tr(H_kk) = (1/N) sum_i [ sum_c p_ic ||J_ic||^2 - ||p_i^T J_i||^2 ]

exactly (SPEC: exact route). The per-example Jacobians come from
``vmap(jacrev(...))`` over examples, in chunks sized to a memory budget.

Whether R_kk vanishes is not guessed from module types (a custom forward may call
any function): :func:`residual_vanishes` measures ||R_kk u|| for a random Gaussian u
on the data and compares it with ||H_kk u||; a structurally piecewise-linear layer
gives exactly 0 there, any smooth non-linearity after the layer does not.

Example:
    >>> import torch
    >>> from wciaudit.curvature.objective import Objective
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    >>> obj = Objective(net, torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,)),
    ...                 ["0.weight", "2.weight"], 8, torch.device("cpu"))
    >>> residual_vanishes(obj)
    {'0.weight': True, '2.weight': True}
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev, vmap

from .estimate import TraceEstimate
from .objective import Objective

Progress = Callable[[int], None]
# relative size of ||R_kk u|| / ||H_kk u|| under which the residual counts as zero;
# piecewise-linear layers give exactly 0, smooth ones give 1e-3 .. 1
RESIDUAL_RTOL = 1e-6


def residual_vanishes(objective: Objective, max_examples: int = 64, seed: int = 0) -> dict[str, bool]:
    """Per layer: is the non-Gauss-Newton part R_kk of the diagonal block zero on the data?

    Measured on the first ``max_examples`` examples with one Gaussian direction per
    layer (a nonzero matrix maps a Gaussian vector to zero with probability 0).
    """
    weights = objective.weights()
    x = objective.x[:max_examples].to(objective.device, objective.dtype)
    y = objective.y[:max_examples].to(objective.device)
    z = objective.logits(weights, x)
    residual = (torch.softmax(z, dim=1) - F.one_hot(y, z.shape[1]).to(z.dtype)).detach()
    # d/dW (residual . z) = J^T (p - e_y) = gradient of the CE, with p held fixed:
    # its derivative along u is R u alone
    r_dot_z = (residual * z).sum()
    loss = F.cross_entropy(z, y, reduction="sum")
    names = objective.names
    grads_r = torch.autograd.grad(r_dot_z, [weights[n] for n in names], create_graph=True)
    grads_l = torch.autograd.grad(loss, [weights[n] for n in names], create_graph=True)
    g = torch.Generator(device="cpu")
    g.manual_seed(seed + 12_345)
    out = {}
    for n, gr, gl in zip(names, grads_r, grads_l):
        u = torch.randn(tuple(weights[n].shape), generator=g).to(objective.device, objective.dtype)
        (ru,) = torch.autograd.grad(gr, weights[n], grad_outputs=u, retain_graph=True, allow_unused=True)
        (hu,) = torch.autograd.grad(gl, weights[n], grad_outputs=u, retain_graph=True, allow_unused=True)
        r_norm = 0.0 if ru is None else float(ru.norm())
        h_norm = 0.0 if hu is None else float(hu.norm())
        out[n] = r_norm <= RESIDUAL_RTOL * max(h_norm, 1e-30)
    return out


def ggn_traces(
    objective: Objective,
    names: list[str] | None = None,
    *,
    memory_bytes: int = 512 * 2**20,
    progress: Progress | None = None,
) -> list[TraceEstimate]:
    """Exact Tr(GGN_kk) per layer from per-example logit Jacobians.

    Equal to Tr(H_kk) where :func:`residual_vanishes` holds. Cost: C vector-Jacobian
    products per example (C = number of classes) for all requested layers together;
    memory: chunk * C * sum_k n_k numbers, the chunk sized to ``memory_bytes``.

    Returns:
        One :class:`TraceEstimate` per layer (``method="exact-ggn"``, se 0).
    """
    names = list(objective.names if names is None else names)
    model = objective.model
    weights = {n: w.detach() for n, w in objective.weights(requires_grad=False).items() if n in names}
    per_example_numbers = sum(w.numel() for w in weights.values())
    totals = {n: torch.zeros((), dtype=torch.float64) for n in names}

    def logits_one(w: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, w, (xi.unsqueeze(0),)).squeeze(0)

    jac_fn = vmap(jacrev(logits_one), in_dims=(None, 0))
    for xb, _, _ in objective.batches():
        with torch.no_grad():
            p_all = torch.softmax(objective.logits(weights, xb), dim=1)
        classes = p_all.shape[1]
        bytes_per_example = classes * per_example_numbers * xb.element_size()
        chunk = max(1, int(memory_bytes // max(bytes_per_example, 1)))
        for c in range(0, xb.shape[0], chunk):
            xc, p = xb[c : c + chunk], p_all[c : c + chunk]
            with torch.no_grad():  # jacrev differentiates inside; no outer graph needed
                jac = jac_fn(weights, xc)
            for n in names:
                j = jac[n].flatten(2)  # (n, C, numel)
                sq = (p * j.pow(2).sum(-1)).sum(-1)
                pj = torch.einsum("nc,ncp->np", p, j)
                totals[n] += (sq - pj.pow(2).sum(-1)).sum().double().cpu()
            del jac
            if progress is not None:
                progress(xc.shape[0])
    return [
        TraceEstimate(
            name=n, trace=float(totals[n]) / objective.n, se=0.0, probes="exact",
            method="exact-ggn", converged=True, stop_reason="exact",
        )
        for n in names
    ]


def ggn_bytes_per_example(objective: Objective, names: list[str], classes: int) -> int:
    """Memory one example's Jacobian rows take (for the route choice)."""
    params = dict(objective.model.named_parameters())
    itemsize = torch.empty((), dtype=objective.dtype).element_size()
    return classes * sum(params[n].numel() for n in names) * itemsize
