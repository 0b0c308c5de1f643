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
from torch import nn
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
    for n, gr, gl in zip(names, grads_r, grads_l, strict=True):
        u = torch.randn(tuple(weights[n].shape), generator=g).to(objective.device, objective.dtype)
        (ru,) = torch.autograd.grad(gr, weights[n], grad_outputs=u, retain_graph=True, allow_unused=True)
        (hu,) = torch.autograd.grad(gl, weights[n], grad_outputs=u, retain_graph=True, allow_unused=True)
        r_norm = 0.0 if ru is None else float(ru.norm())
        h_norm = 0.0 if hu is None else float(hu.norm())
        out[n] = r_norm <= RESIDUAL_RTOL * max(h_norm, 1e-30)
    # under torchrun each process checks its own examples: the route is exact only if
    # it is exact on all of them, and every process must take the same route
    smooth = objective.reduce(torch.tensor([0.0 if out[n] else 1.0 for n in names], dtype=torch.float64))
    return {n: bool(s == 0) for n, s in zip(names, smooth, strict=True)}


def ggn_traces(
    objective: Objective,
    names: list[str] | None = None,
    *,
    memory_bytes: int = 512 * 2**20,
    progress: Progress | None = None,
) -> list[TraceEstimate]:
    """Exact Tr(GGN_kk) per layer; equal to Tr(H_kk) where :func:`residual_vanishes` holds.

    Linear and Conv2d layers (each called once per forward) take the fast route: C + 1
    batched backward passes per batch (one per class, one for p^T z) with per-example
    squared gradient norms formed from the layer's input and output gradient
    (:func:`per_example_sq_norms`). Other layers take ``vmap(jacrev(...))`` over
    examples, in chunks of ``memory_bytes``.

    Returns:
        One :class:`TraceEstimate` per layer (``method="exact-ggn"``, se 0), in order.
    """
    names = list(objective.names if names is None else names)
    modules = _hookable_modules(objective, names)
    fast = [n for n in names if n in modules]
    totals = {n: torch.zeros((), dtype=torch.float64) for n in names}
    if fast:
        _ggn_by_backward(objective, {n: modules[n] for n in fast}, totals, progress)
    slow = [n for n in names if n not in fast or totals[n] is None]
    if slow:
        _ggn_by_jacobians(objective, slow, totals, memory_bytes, progress)
    summed = objective.reduce(torch.stack([totals[n] for n in names]))
    totals = dict(zip(names, summed, strict=True))
    return [
        TraceEstimate(
            name=n, trace=float(totals[n]) / objective.n, se=0.0, probes="exact",
            method="exact-ggn", converged=True, stop_reason="exact",
        )
        for n in names
    ]


def _hookable_modules(objective: Objective, names: list[str]) -> dict[str, nn.Module]:
    wanted = set(names)
    out = {}
    for module_name, module in objective.model.named_modules():
        pname = f"{module_name}.weight" if module_name else "weight"
        if pname not in wanted:
            continue
        if isinstance(module, nn.Linear) or (
            isinstance(module, nn.Conv2d) and module.padding_mode == "zeros"
        ):
            out[pname] = module
    return out


def _ggn_by_backward(
    objective: Objective,
    modules: dict[str, nn.Module],
    totals: dict[str, torch.Tensor | None],
    progress: Progress | None,
) -> None:
    # differentiate with respect to the input, not the weights: the hooks read each
    # layer's output gradient on the way, and no weight gradient is formed in vain
    weights = objective.weights(requires_grad=False)
    names = list(modules)
    acts: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}

    def forward_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1
            acts[name] = inputs[0].detach()
            if output.requires_grad:
                output.register_hook(lambda g: grads.__setitem__(name, g.detach()))

        return hook

    handles = [m.register_forward_hook(forward_hook(n)) for n, m in modules.items()]
    try:
        for xb, _ in objective.batches():
            calls.clear()
            xb = xb.detach().requires_grad_(True)
            z = objective.logits(weights, xb)
            p = torch.softmax(z.detach(), dim=1)
            usable = [n for n in names if calls.get(n) == 1 and totals[n] is not None]
            for n in names:
                if n not in usable:
                    totals[n] = None  # called twice or not at all: left to the Jacobian route
            for c in range(p.shape[1] + 1):
                cot = p if c == p.shape[1] else torch.nn.functional.one_hot(
                    torch.full((z.shape[0],), c, device=z.device), p.shape[1]
                ).to(z.dtype)
                grads.clear()
                torch.autograd.grad(z, xb, grad_outputs=cot, retain_graph=True, allow_unused=True)
                for n in usable:
                    sq = per_example_sq_norms(modules[n], acts[n], grads[n])
                    if c == p.shape[1]:
                        totals[n] -= sq.sum().double().cpu()
                    else:
                        totals[n] += (p[:, c] * sq).sum().double().cpu()
            if progress is not None:
                progress(xb.shape[0])
    finally:
        for h in handles:
            h.remove()


def per_example_sq_norms(module: nn.Module, a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """||dz/dW||_F^2 per example for the backpropagated output gradient ``d``.

    Linear: the per-example weight gradient is d_i^T a_i over the token axes; Conv2d:
    d_i (O x L) times the unfolded input (L x K), per group. The squared norm is formed
    either from the gradient itself or from Gram matrices, whichever is cheaper:
    ||D^T A||_F^2 = sum(D D^T * A A^T) (BackPACK's BatchL2Grad does the same).

    Args:
        a: the layer's input, (N, ..., K) for Linear, (N, C, H, W) for Conv2d.
        d: gradient with respect to the layer's output.

    Returns:
        (N,) squared norms.
    """
    n = a.shape[0]
    if isinstance(module, nn.Linear):
        if a.dim() == 2:
            return d.pow(2).sum(1) * a.pow(2).sum(1)
        a3, d3 = a.reshape(n, -1, a.shape[-1]), d.reshape(n, -1, d.shape[-1])
        return _sq_norm_of_products(d3.unsqueeze(1).transpose(2, 3), a3.unsqueeze(1).transpose(2, 3))
    g = module.groups
    cols = F.unfold(a, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
    cols = cols.reshape(n, g, -1, cols.shape[-1])  # (N, g, Kg, L)
    dd = d.reshape(n, g, -1, cols.shape[-1])  # (N, g, Og, L)
    return _sq_norm_of_products(dd, cols)


def _sq_norm_of_products(d: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """sum over groups of ||d_g a_g^T||_F^2 per example; d (N, g, O, L), a (N, g, K, L)."""
    o, k, length = d.shape[2], a.shape[2], d.shape[3]
    if length * (o + k) < o * k:
        gram_d = torch.einsum("ngol,ngom->nglm", d, d)
        gram_a = torch.einsum("ngkl,ngkm->nglm", a, a)
        return (gram_d * gram_a).sum((1, 2, 3))
    return torch.einsum("ngol,ngkl->ngok", d, a).pow(2).sum((1, 2, 3))


def _ggn_by_jacobians(
    objective: Objective,
    names: list[str],
    totals: dict[str, torch.Tensor | None],
    memory_bytes: int,
    progress: Progress | None,
) -> None:
    model = objective.model
    weights = {n: w for n, w in objective.weights(requires_grad=False).items() if n in names}
    per_example_numbers = sum(w.numel() for w in weights.values())
    for n in names:
        totals[n] = torch.zeros((), dtype=torch.float64)

    def logits_one(w: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, w, (xi.unsqueeze(0),)).squeeze(0)

    jac_fn = vmap(jacrev(logits_one), in_dims=(None, 0))
    for xb, _ in objective.batches():
        with torch.no_grad():
            p_all = torch.softmax(objective.logits(weights, xb), dim=1)
        bytes_per_example = p_all.shape[1] * per_example_numbers * xb.element_size()
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


def hookable(objective: Objective, names: list[str]) -> list[str]:
    """Layers the backward route serves (Linear, zero-padded Conv2d)."""
    return list(_hookable_modules(objective, names))


def ggn_bytes_per_example(objective: Objective, names: list[str], classes: int) -> int:
    """Memory one example's Jacobian rows take (for the route choice)."""
    params = dict(objective.model.named_parameters())
    itemsize = torch.empty((), dtype=objective.dtype).element_size()
    return classes * sum(params[n].numel() for n in names) * itemsize
