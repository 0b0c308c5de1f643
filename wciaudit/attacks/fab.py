"""FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), as in AutoAttack.

F. Croce and M. Hein, "Minimally distorted adversarial examples with a fast adaptive
boundary attack", ICML 2020; the targeted version and its settings (9 target classes,
100 iterations, one run, alpha_max = 0.1, eta = 1.05, beta = 0.9) from "Reliable
evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks", ICML 2020.

For each target class t (the 2nd, 3rd, ... most likely class at the clean input x)
and each still-unbroken example, FAB looks for the closest point where t beats the
label y. At the iterate x_k it linearises the boundary between y and t,

    f(z) = z_t(z) - z_y(z),   {z : f(x_k) + grad f(x_k) . (z - x_k) = 0},

computes the smallest L-p steps d_k (from x_k) and d_0 (from x) onto that hyperplane
that stay in the box [lo, hi] (:func:`project_onto_hyperplane`), and moves to

    x_{k+1} = clip((1 - a) (x_k + eta d_k) + a (x + eta d_0)),
    a = min(|d_k| / (|d_k| + |d_0|), alpha_max).

When x_{k+1} is misclassified it is kept if it is the closest such point so far, and
the iterate steps back towards x: x_{k+1} <- x + beta (x_{k+1} - x). An example counts
as broken when its closest misclassified point lies within eps. The first run starts at
x; further restarts start at a random point at distance eps / 2, drawn from a
generator seeded by (seed, global example index, target, restart).

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    >>> x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    >>> x_adv = fab_targeted(net, x, y, eps=0.1, norm="linf", steps=10)
    >>> bool(((x_adv - x).abs() <= 0.1 + 1e-6).all())
    True
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import Norm, parse_norm
from ..model import no_tf32
from .apgd import TARGET_CLASSES
from .seeding import example_generators, global_indices
from .threat import check_counts, check_threat_model, size, unit

__all__ = ["fab_targeted", "project_onto_hyperplane"]

ALPHA_MAX = 0.1
ETA = 1.05
BETA = 0.9
_FAB_TAG = 0xFAB


#: FAB-T's iterations in the standard AutoAttack (Croce & Hein 2020)
FAB_STEPS = 100


def _water_level(weight: torch.Tensor, cap: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The smallest tau >= 0 with sum_i weight_i min(tau, cap_i) = c, per row; inf if none.

    The left side is piecewise linear, concave and non-decreasing in tau, with kinks at
    the caps: sort them, evaluate it at every kink, and solve on the first piece whose
    end reaches c.
    """
    cap_sorted, order = cap.sort(dim=1)
    w_sorted = weight.gather(1, order)
    filled = (w_sorted * cap_sorted).cumsum(1)  # sum over coordinates capped by this kink
    used = w_sorted.cumsum(1)
    total = used[:, -1:]
    at_kink = filled + cap_sorted * (total - used)
    k = (at_kink < c[:, None]).sum(1)  # kinks below the level; the solution is past them
    prev = (k - 1).clamp_min(0)[:, None]
    filled_prev = torch.where(k > 0, filled.gather(1, prev).squeeze(1), 0.0)
    used_prev = torch.where(k > 0, used.gather(1, prev).squeeze(1), 0.0)
    slope = (total.squeeze(1) - used_prev).clamp_min(torch.finfo(c.dtype).tiny)
    tau = ((c - filled_prev) / slope).clamp_min(0)
    return torch.where(k < cap.shape[1], tau, torch.full_like(tau, math.inf))


def project_onto_hyperplane(
    t: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    norm: str,
    lo: float = 0.0,
    hi: float = 1.0,
) -> torch.Tensor:
    """Smallest step d (L-inf or L2) with w . (t + d) = b and lo <= t + d <= hi, per row.

    The optimum moves every coordinate towards the hyperplane, in the direction of
    sign(w_i) (signs taken so the plane lies ahead), by min(tau, room_i) for L-inf and
    by |w_i| min(tau, room_i / |w_i|) for L2 (the KKT point of the box-constrained
    least-norm problem), where room_i is the distance to the box's face in that
    direction and tau is the level at which the plane is reached. When the box does not
    reach the plane, the step goes to the box's corner closest to it.

    Args:
        t: points, shape (N, D), inside [lo, hi].
        w: hyperplane normals, shape (N, D).
        b: offsets, shape (N,).
        norm: ``"linf"`` or ``"l2"``.
        lo, hi: the box.

    Returns:
        d, shape (N, D).
    """
    norm = parse_norm(norm)
    gap = b - (w * t).sum(1)
    s = torch.where(gap[:, None] < 0, -w, w)  # now s . d must equal |gap|
    gap = gap.abs()
    room = torch.where(s > 0, hi - t, t - lo).clamp_min(0)
    if norm is Norm.linf:
        weight, cap, direction = s.abs(), room, s.sign()
    else:
        nonzero = s != 0
        weight = s * s
        cap = torch.where(nonzero, room / torch.where(nonzero, s.abs(), 1.0), 0.0)
        direction = s
    tau = _water_level(weight, cap, gap)
    d = direction * torch.minimum(tau[:, None], cap)
    # room / |w| * |w| can round past the face
    return torch.minimum(torch.maximum(d, lo - t), hi - t)


def _boundary(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor):
    """f = z_target - z_y at x, and its input gradient, shape (N, D)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        f = logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])
        (g,) = torch.autograd.grad(f.sum(), x)
    return f.detach().squeeze(1), g.flatten(1)


def _fab_run(model, x0, y, target, norm: Norm, steps: int, lo: float, hi: float, start):
    """One FAB-T run; returns the closest misclassified point found and its distance (inf if none)."""
    n = x0.shape[0]
    flat0 = x0.flatten(1)
    x1 = flat0.clone() if start is None else start.flatten(1).clone()
    best = flat0.clone()
    best_dist = torch.full((n,), math.inf, device=x0.device, dtype=x0.dtype)
    for _ in range(steps):
        f, g = _boundary(model, x1.view_as(x0), y, target)
        b = (g * x1).sum(1) - f
        d = project_onto_hyperplane(
            torch.cat([x1, flat0]), torch.cat([g, g]), torch.cat([b, b]), norm, lo, hi
        )
        d1, d0 = d[:n], d[n:]
        a = size(d, norm).clamp_min(1e-8)
        alpha = (a[:n] / (a[:n] + a[n:])).clamp(0.0, ALPHA_MAX)[:, None]
        x1 = ((1 - alpha) * (x1 + ETA * d1) + alpha * (flat0 + ETA * d0)).clamp(lo, hi)
        with torch.no_grad():
            is_adv = model(x1.view_as(x0)).argmax(1) != y
        dist = size(x1 - flat0, norm)
        closer = is_adv & (dist < best_dist)
        # torch.where, not boolean-mask writes, which wait for the device to count the
        # rows (a host sync per step on a GPU); the values are the same
        best = torch.where(closer[:, None], x1, best)
        best_dist = torch.where(closer, dist, best_dist)
        x1 = torch.where(is_adv[:, None], flat0 + BETA * (x1 - flat0), x1)
    return best.view_as(x0), best_dist


def _random_start(x0, eps, norm: Norm, lo, hi, seed, indices, target_rank, restart):
    gens = example_generators(seed, indices, _FAB_TAG, target_rank, restart)
    shape = tuple(x0.shape[1:])
    draw = torch.rand if norm is Norm.linf else torch.randn
    t = torch.stack([draw(shape, generator=g) for g in gens]).to(x0.device, x0.dtype)
    if norm is Norm.linf:
        t = 2 * t - 1
    return (x0 + 0.5 * eps * unit(t, norm)).clamp(lo, hi)


@no_tf32()
def fab_targeted(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    n_target_classes: int = TARGET_CLASSES,
    steps: int = FAB_STEPS,
    restarts: int = 1,
    seed: int = 0,
    lo: float = 0.0,
    hi: float = 1.0,
    index_offset: int = 0,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """FAB-T at AutoAttack's settings (the defaults): misclassified points within eps.

    Args:
        model: classifier in eval mode taking inputs in [lo, hi], returning logits.
        x: inputs, shape (N, ...), on the model's device.
        y: integer labels, shape (N,).
        eps: radius of the L-inf or L2 ball, in input units.
        norm: ``"linf"`` or ``"l2"``.
        n_target_classes: how many of the most likely wrong classes to target, in
            order; at most C - 1 are used.
        steps: iterations per run.
        restarts: runs per target class; the first starts at x, others at random.
        seed: seeds the random starts, together with each example's global index.
        lo, hi: the data range; every point stays inside it.
        index_offset: global index of ``x[0]``; or ``indices``, the global index of every
            example (a subset of a split), for batch- and shard-independent starts.

    Returns:
        x_adv, shape of x, detached: for an example broken within eps, the closest
        misclassified point found by the first target and run that broke it; x itself
        where the model already errs on x or no such point was found.

    Raises:
        ConfigError: on a norm other than linf/l2, negative eps, a count below 1 or
            lo >= hi.
    """
    norm = check_threat_model(eps, norm, lo, hi)
    check_counts(n_target_classes=n_target_classes, steps=steps, restarts=restarts)
    x = x.detach()
    y = y.to(x.device)
    x_adv = x.clone()
    if eps == 0 or x.shape[0] == 0:
        return x_adv
    with torch.no_grad():
        logits = model(x)
    robust = logits.argmax(1) == y
    ranked = logits.argsort(dim=1, descending=True)
    index = global_indices(x.shape[0], indices, index_offset)
    for rank in range(1, min(n_target_classes, logits.shape[1] - 1) + 1):
        for restart in range(restarts):
            todo = robust.nonzero().flatten()
            if todo.numel() == 0:
                return x_adv
            x0, y0 = x[todo], y[todo]
            start = None
            if restart > 0:
                start = _random_start(x0, eps, norm, lo, hi, seed, index[todo.cpu()], rank, restart)
            found, dist = _fab_run(model, x0, y0, ranked[todo, rank], norm, steps, lo, hi, start)
            with torch.no_grad():
                broken = (dist <= eps) & (model(found).argmax(1) != y0)
            x_adv[todo[broken]] = found[broken]
            robust[todo[broken]] = False
    return x_adv
