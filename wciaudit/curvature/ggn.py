"""Exact diagonal-block traces through the Gauss-Newton decomposition (Schraudolph 2002).

For cross-entropy on logits z_i = f(x_i; w), with p_i = softmax(z_i) and
J_ik = dz_i / dW_k (C x n_k), the diagonal Hessian block splits as

    H_kk = (1/N) sum_i J_ik^T (diag(p_i) - p_i p_i^T) J_ik  +  R_kk,
    R_kk = (1/N) sum_i sum_c (p_ic - [y_i = c]) d^2 z_ic / dW_k^2.

When the network is piecewise linear in W_k alone (ReLU, max-pool, eval-mode
BatchNorm; no GELU/SiLU/softmax attention/LayerNorm after W_k, and no path through
two uses of W_k in series), d^2 z / dW_k^2 = 0 almost everywhere, so R_kk = 0 and

    Tr(H_kk) = (1/N) sum_i [ sum_c p_ic ||J_ic||^2 - ||p_i^T J_i||^2 ]
             = (1/N) sum_i sum_c p_ic ||J_i^T (e_c - p_i)||^2

exactly (SPEC: exact route). The second form is what is computed: its terms are
non-negative, where the first subtracts two sums that nearly cancel in float32 when
p_i is nearly one-hot. The per-example Jacobians come from
``vmap(jacrev(...))`` over examples, in chunks sized to a memory budget.

Whether R_kk vanishes is not guessed from module types (a custom forward may call
any function): :func:`residual_vanishes` measures R_kk u for a random Gaussian u on
the data; a structurally piecewise-linear layer gives exactly 0 there, any smooth
non-linearity after the layer does not.

Example:
    >>> import torch
    >>> from wciaudit.curvature.objective import Objective
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    >>> obj = Objective(net, torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,)),
    ...                 ["0.weight", "2.weight"], 8, torch.device("cpu"))
    >>> residual_vanishes(obj, seed=0)
    {'0.weight': True, '2.weight': True}
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.overrides import TorchFunctionMode

from .estimate import TraceEstimate
from .groups import GROUPS, share_group_count, share_groups
from .memory import chunk_examples
from .objective import Objective
from .standard_errors import subset_mean_and_se

Progress = Callable[[int], None]


def residual_vanishes(objective: Objective, *, seed: int, max_examples: int = 8) -> dict[str, bool]:
    """Per layer: is the non-Gauss-Newton part R_kk of the diagonal block zero on the data?

    Measured on the first ``max_examples`` examples with one Gaussian direction u per
    layer (a nonzero matrix maps a Gaussian vector to zero with probability 0): R_kk u
    is the derivative along u of J^T r with the softmax residual r held fixed. The
    answer is structural, so a few examples suffice (on 64 the check took longer than
    the whole exact route on a resnet18), and on a piecewise-linear layer (ReLU,
    max-pool, eval-mode BatchNorm downstream) the product is exactly 0: every second
    derivative on its path is a zero tensor, not a rounded one. So the residual counts
    as zero only where it is exactly 0 (measured ||R u|| / ||H u|| on smooth layers:
    1e-3 to 1). A rounding error on a piecewise-linear layer would send it to
    Hutchinson, which costs time, never bias; the other way round, a smooth layer
    given the Gauss-Newton route, cannot happen. One Hessian-vector product per layer.
    (Forward-over-forward differentiation, ``torch.func.jvp`` twice, gives the same
    answer but measured 2x slower on CPU.)
    """
    weights = objective.weights()
    x = objective.x[:max_examples].to(objective.device, objective.dtype)
    y = objective.y[:max_examples].to(objective.device)
    z = objective.logits(weights, x)
    residual = (torch.softmax(z, dim=1) - F.one_hot(y, z.shape[1]).to(z.dtype)).detach()
    # d/dW (residual . z) = J^T (p - e_y) = gradient of the CE, with p held fixed:
    # its derivative along u is R u alone
    r_dot_z = (residual * z).sum()
    names = objective.names
    grads_r = torch.autograd.grad(r_dot_z, [weights[n] for n in names], create_graph=True)
    g = torch.Generator(device="cpu")
    g.manual_seed(seed + 12_345)
    out = {}
    for n, gr in zip(names, grads_r, strict=True):
        u = torch.randn(tuple(weights[n].shape), generator=g).to(objective.device, objective.dtype)
        if not gr.requires_grad:  # the gradient does not depend on W_k at all (a linear model)
            out[n] = True
            continue
        (ru,) = torch.autograd.grad(
            gr, weights[n], grad_outputs=u, retain_graph=True, allow_unused=True
        )
        out[n] = ru is None or not bool(ru.ne(0).any())
    # under torchrun each process checks its own examples: the route is exact only if
    # it is exact on all of them, and every process must take the same route
    smooth = objective.reduce(
        torch.tensor([0.0 if out[n] else 1.0 for n in names], dtype=torch.float64)
    )
    return {n: bool(s == 0) for n, s in zip(names, smooth, strict=True)}


def ggn_traces(
    objective: Objective,
    names: list[str] | None = None,
    *,
    memory_bytes: int,
    seed: int,
    progress: Progress | None = None,
    groups: int = GROUPS,
) -> list[TraceEstimate]:
    """Exact Tr(GGN_kk) per layer; equal to Tr(H_kk) where :func:`residual_vanishes` holds.

    A weight used only by Linear and zero-padded Conv2d modules (one or several, each
    called any number of times) takes the fast route: C batched backward passes per
    batch, one per class c with the cotangent e_c - p; every use's input and output gradient is
    recorded, and the uses are summed per example before squaring, so tied weights get
    ||sum_u dz/dW_u||^2, not sum_u ||dz/dW_u||^2 (:func:`per_example_sq_norms`). A weight
    used any other way (a functional call, a transpose, another module type) takes
    ``vmap(jacrev(...))`` over examples, in chunks of ``memory_bytes``, which sees every
    use through ``functional_call``.

    The trace is the mean over the n examples of per-example traces t_i; their spread
    gives the SE of drawing the n examples out of the split's N
    (``objective.n_population``): sqrt(1 - n/N) * sd(t) / sqrt(n), 0 when n = N.
    Each estimate also carries its ``group_shares``: sum_{i in g} t_i / n over the
    fine groups of :func:`~wciaudit.curvature.groups.share_groups` (``groups``,
    ``seed``), the unit two runs on the same examples are paired by.

    Returns:
        One :class:`TraceEstimate` per layer (``method="exact-ggn"``), in order.
    """
    names = list(objective.names if names is None else names)
    uses, why_not = _weight_uses(objective, names)
    fast = [n for n in names if n in uses]
    assignment = share_groups(objective.n, seed, groups)
    offset = objective.offset
    sums = _Sums(
        assignment[offset : offset + objective.n_local],
        share_group_count(objective.n, groups),
        objective.n,
    )
    if fast:
        _ggn_by_backward(objective, {n: uses[n] for n in fast}, sums, progress)
    slow = [n for n in names if n not in fast]
    if slow:
        _ggn_by_jacobians(objective, slow, sums, memory_bytes, progress)
    summed = objective.reduce(torch.stack([sums.totals[n] for n in names]))
    out = []
    for n, row in zip(names, summed.tolist(), strict=True):
        s1, s2, shares = row[0], row[1], tuple(row[2:])
        trace, sample_se, covers = subset_mean_and_se(s1, s2, objective.n, objective.n_population)
        count = len(uses.get(n, ()))
        reason = (
            (
                f"per-example gradients from layer hooks ({count} modules share the weight, summed per example)"
                if count > 1
                else "per-example gradients from layer hooks"
            )
            if n in uses
            else f"per-example Jacobians: {why_not[n]}"
        )
        out.append(
            TraceEstimate(
                name=n,
                trace=trace,
                se=sample_se,
                probes="exact",
                method="exact-ggn",
                converged=True,
                stop_reason="exact",
                probe_se=0.0,
                sample_se=sample_se,
                se_covers=covers,
                route_reason=reason,
                group_shares=shares,
            )
        )
    return out


class _Sums:
    """Per layer, [sum_i t_i, sum_i t_i^2, then sum_{i in g} t_i / n per group g] over
    this process's examples, fed batch by batch in row order."""

    def __init__(self, group_of: torch.Tensor, n_groups: int, n: int) -> None:
        self.group_of, self.n_groups, self.n = group_of, n_groups, n
        self.totals: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}

    def add(self, name: str, t: torch.Tensor) -> None:
        t = t.detach().double().cpu()
        total = self.totals.setdefault(name, torch.zeros(2 + self.n_groups, dtype=torch.float64))
        row = self.rows.get(name, 0)
        total[0] += t.sum()
        total[1] += t.pow(2).sum()
        total[2:].index_add_(0, self.group_of[row : row + t.shape[0]], t / self.n)
        self.rows[name] = row + t.shape[0]


def _is_hookable_module(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (
        isinstance(module, nn.Conv2d) and module.padding_mode == "zeros"
    )


class _CountUses(TorchFunctionMode):
    """Counts the torch calls that take each watched tensor as an argument."""

    def __init__(self, watched: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.ids = {id(t): n for n, t in watched.items()}
        self.counts = dict.fromkeys(watched, 0)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        for a in (*args, *kwargs.values()):
            for t in a if isinstance(a, (list, tuple)) else (a,):
                name = self.ids.get(id(t))
                if name is not None:
                    self.counts[name] += 1
        return func(*args, **kwargs)


def _weight_uses(
    objective: Objective, names: list[str]
) -> tuple[dict[str, list[nn.Module]], dict[str, str]]:
    """Per layer, the Linear / Conv2d modules that hold its weight (by tensor identity),
    when every use of the weight in a forward pass is a call of one of them.

    One forward on one example counts, per weight, the torch calls that take it as an
    argument and the calls of the modules that hold it; the two must agree, or the
    weight has a use the hooks do not see.

    Returns:
        (uses, why_not): modules per servable layer, and the reason for the others.
    """
    params = dict(objective.model.named_parameters())
    by_id = {id(params[n]): n for n in names}
    holders: dict[str, list[nn.Module]] = {n: [] for n in names}
    why_not: dict[str, str] = {}
    for module in objective.model.modules():
        for pname, p in module.named_parameters(recurse=False):
            n = by_id.get(id(p))
            if n is None:
                continue
            if pname == "weight" and _is_hookable_module(module):
                holders[n].append(module)
            else:
                why_not[n] = f"held by a {type(module).__name__} as '{pname}'"
    for n in names:
        mods = holders[n]
        if n not in why_not and not mods:
            why_not[n] = "no Linear or Conv2d module holds the weight"
        elif n not in why_not and len({getattr(m, "groups", 1) for m in mods}) > 1:
            why_not[n] = "convolutions with different groups share the weight"
    candidates = [n for n in names if n not in why_not]
    if candidates:
        weights = objective.weights(requires_grad=False)
        module_calls = dict.fromkeys(candidates, 0)
        owner = {id(m): n for n in candidates for m in holders[n]}

        def count(module: nn.Module, inputs: tuple) -> None:
            module_calls[owner[id(module)]] += 1

        handles = [m.register_forward_pre_hook(count) for n in candidates for m in holders[n]]
        counter = _CountUses({n: weights[n] for n in candidates})
        try:
            with torch.no_grad(), counter:
                objective.logits(weights, objective.x[:1].to(objective.device, objective.dtype))
        finally:
            for h in handles:
                h.remove()
        for n in candidates:
            if counter.counts[n] != module_calls[n]:
                why_not[n] = (
                    f"the weight enters {counter.counts[n]} torch calls, {module_calls[n]} of them "
                    "through Linear/Conv2d modules"
                )
    return {n: holders[n] for n in names if n not in why_not}, why_not


def _ggn_by_backward(
    objective: Objective,
    uses: dict[str, list[nn.Module]],
    sums: _Sums,
    progress: Progress | None,
) -> None:
    # differentiate with respect to the layers' inputs, not the weights: the hooks
    # read each use's output gradient on the way, no weight gradient is formed, and
    # the backward stops at the earliest layer (for a head alone, at the head)
    weights = objective.weights(requires_grad=False)
    names = list(uses)
    owner = {id(m): n for n in names for m in uses[n]}
    calls: dict[str, list[dict]] = {n: [] for n in names}
    stops: list[torch.Tensor] = []

    def forward_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        call = {"module": module, "a": inputs[0].detach(), "d": None}
        calls[owner[id(module)]].append(call)
        stops.append(inputs[0])
        if output.requires_grad:
            output.register_hook(lambda g: call.__setitem__("d", g.detach()))

    modules = {id(m): m for n in names for m in uses[n]}
    handles = [m.register_forward_hook(forward_hook) for m in modules.values()]
    try:
        for xb, _ in objective.batches():
            xb = xb.detach().requires_grad_(True)
            z = objective.logits(weights, xb)
            p = torch.softmax(z.detach(), dim=1)
            per_example = {
                n: torch.zeros(z.shape[0], dtype=torch.float64, device=z.device) for n in names
            }
            for c in range(p.shape[1]):
                # cotangent e_c - p: sum_c p_c ||J^T (e_c - p)||^2 equals
                # sum_c p_c ||J_c||^2 - ||p^T J||^2 without the difference of two large
                # sums, which cancels in float32 when p is nearly one-hot
                cot = -p
                cot[:, c] += 1
                for n in names:
                    for call in calls[n]:
                        call["d"] = None
                output_gradients(z, cot, stops, xb)
                for n in names:
                    sq = _tied_sq_norms(calls[n])
                    if sq is not None:
                        per_example[n] += (p[:, c] * sq).double()
            for n in names:
                sums.add(n, per_example[n])
            if progress is not None:
                progress(xb.shape[0])
            # free this batch's graph (held by the logits and the layers' inputs)
            # before the next is built: one graph at a time
            for n in names:
                calls[n].clear()
            stops.clear()
            del z, cot, xb
    finally:
        for h in handles:
            h.remove()


def output_gradients(
    z: torch.Tensor, cot: torch.Tensor, stops: list[torch.Tensor], xb: torch.Tensor
) -> None:
    """Backpropagate ``cot`` from the logits ``z`` as far as the hooked layers' inputs
    ``stops`` (where none takes a gradient, to the model's input ``xb``), so that the
    tensor hooks on the layers' outputs fire and nothing below them is computed."""
    inputs = [t for t in stops if t.requires_grad] or [xb]
    torch.autograd.grad(z, inputs, grad_outputs=cot, retain_graph=True, allow_unused=True)


def _tied_sq_norms(calls: list[dict]) -> torch.Tensor | None:
    """||sum_u dz/dW_u||_F^2 per example over the uses u of one weight.

    The per-example weight gradient of one use is D_u^T A_u over its token axis
    (positions for Linear, output pixels for Conv2d); a sum over uses is D^T A with
    the token axes of all uses joined, so one call of the single-use formula serves.
    """
    live = [c for c in calls if c["d"] is not None]
    if not live:
        return None
    if len(live) == 1:
        return per_example_sq_norms(live[0]["module"], live[0]["a"], live[0]["d"])
    ds, as_ = zip(*(_token_form(c["module"], c["a"], c["d"]) for c in live), strict=True)
    return _sq_norm_of_products(torch.cat(ds, dim=3), torch.cat(as_, dim=3))


def _token_form(
    module: nn.Module, a: torch.Tensor, d: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d, a) of one use as (N, g, O, L) and (N, g, K, L), the gradient being sum_l d a^T."""
    n = a.shape[0]
    if isinstance(module, nn.Linear):
        a3, d3 = a.reshape(n, -1, a.shape[-1]), d.reshape(n, -1, d.shape[-1])
        return d3.transpose(1, 2).unsqueeze(1), a3.transpose(1, 2).unsqueeze(1)
    g = module.groups
    cols = F.unfold(
        a,
        module.kernel_size,
        dilation=module.dilation,
        padding=module.padding,
        stride=module.stride,
    )
    cols = cols.reshape(n, g, -1, cols.shape[-1])
    return d.reshape(n, g, -1, cols.shape[-1]), cols


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
    if isinstance(module, nn.Linear) and a.dim() == 2:
        return d.pow(2).sum(1) * a.pow(2).sum(1)
    return _sq_norm_of_products(*_token_form(module, a, d))


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
    sums: _Sums,
    memory_bytes: int,
    progress: Progress | None,
) -> None:
    """Adds the per-example traces t_i of each layer to ``sums``, from per-example Jacobians."""
    model = objective.model
    weights = {n: w for n, w in objective.weights(requires_grad=False).items() if n in names}
    per_example_numbers = sum(w.numel() for w in weights.values())

    def logits_one(w: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, w, (xi.unsqueeze(0),)).squeeze(0)

    jac_fn = vmap(jacrev(logits_one), in_dims=(None, 0))
    chunk: int | None = None
    for xb, _ in objective.batches():
        with torch.no_grad():
            p_all = torch.softmax(objective.logits(weights, xb), dim=1)
        if chunk is None:  # sized once: C is known from the first batch's logits
            chunk = chunk_examples(objective, p_all.shape[1], per_example_numbers, memory_bytes)
        for c in range(0, xb.shape[0], chunk):
            xc, p = xb[c : c + chunk], p_all[c : c + chunk]
            with torch.no_grad():  # jacrev differentiates inside; no outer graph needed
                jac = jac_fn(weights, xc)
            for n in names:
                j = jac[n].flatten(2)  # (n, C, numel)
                pj = torch.einsum("nc,ncp->np", p, j)
                # sum_c p_c ||J_c - p^T J||^2: non-negative terms, no float32 cancellation
                # (in place: the Jacobian chunk is not used again)
                sums.add(n, (p * j.sub_(pj.unsqueeze(1)).pow(2).sum(-1)).sum(-1))
            del jac
            if progress is not None:
                progress(xc.shape[0])


def hookable(objective: Objective, names: list[str]) -> list[str]:
    """Layers the backward route serves: every use of the weight is a call of a Linear
    or zero-padded Conv2d module holding it (see :func:`ggn_traces`)."""
    return list(weight_modules(objective, names))


def weight_modules(objective: Objective, names: list[str]) -> dict[str, list[nn.Module]]:
    """The Linear / zero-padded Conv2d modules holding each layer's weight, for the
    layers whose every use is a call of one of them (see :func:`ggn_traces`)."""
    uses, _ = _weight_uses(objective, names)
    return {n: uses[n] for n in names if n in uses}


def ggn_bytes_per_example(objective: Objective, names: list[str], classes: int) -> int:
    """Memory one example's Jacobian rows take (for the route choice)."""
    params = dict(objective.model.named_parameters())
    itemsize = torch.empty((), dtype=objective.dtype).element_size()
    return classes * sum(params[n].numel() for n in names) * itemsize
