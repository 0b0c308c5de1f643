"""APGD-CE and APGD-T (Croce & Hein 2020, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", Algorithm 1), L-inf and L2.

One run: start x0 = x + eps * t, t uniform in [-1, 1] scaled so that max|t| = 1
(L-inf) or t normal scaled to ||t|| = 1 (L2), clipped to [lo, hi]. Step size eta = 2 eps
per example. Each step (momentum alpha = 0.75, none on the first step)

    z       = P(x_k + eta * s(g_k))            s = sign (L-inf) or g / ||g||_2 (L2)
    x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))

with P the projection onto the eps-ball intersected with [lo, hi]. At checkpoints, the
first after p1 = 0.22 N iterations and then every max(p - 0.03 N, 0.06 N) iterations
(N = iterations, 100 by default), eta is halved and the iterate reset to the best point
where the loss rose in at most rho = 0.75 of the steps since the last checkpoint, or
where eta was not just halved and the best loss did not improve.

APGD-CE maximises cross-entropy; APGD-T maximises the targeted DLR loss
-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) towards each of the n_target_classes
(default 9, at most C - 1) classes with the highest clean logits in turn. An example is
broken if any iterate of any run is misclassified; later restarts and targets run on
the examples still robust only. Starts are seeded per example (:mod:`.seeding`), so
results do not depend on the batch size or on sharding.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    >>> x, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    >>> out = apgd_ce(net, x, y, eps=0.1, norm="linf", steps=10)
    >>> bool(((out.x_adv - x).abs() <= 0.1 + 1e-6).all()), out.broken.shape
    (True, torch.Size([6]))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Norm, parse_norm
from ..errors import ConfigError
from ..model import no_tf32
from .seeding import global_indices, per_example_normal, per_example_uniform
from .threat import (
    bcast_rows,
    check_counts,
    check_threat_model,
    project,
    steepest_direction,
    unit,
)

APGD_CE_TAG = 2
APGD_T_TAG = 3

LossFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class APGDBatch:
    """APGD's outcome on one batch (detached, on the batch's device).

    Attributes:
        x_loss: each example's highest-loss iterate (the attack's own loss).
        loss: that loss, shape (N,).
        broken: True where some iterate was misclassified, shape (N,) bool.
        x_adv: the first misclassified iterate where one was found, else ``x_loss``.
    """

    x_loss: torch.Tensor
    loss: torch.Tensor
    broken: torch.Tensor
    x_adv: torch.Tensor


#: APGD's iterations and APGD-T's target classes in the standard AutoAttack (Croce & Hein 2020)
APGD_STEPS = 100
TARGET_CLASSES = 9


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss per example: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12).

    With fewer than 4 classes the denominator uses the smallest logit in place of the
    missing ones (z_pi1 - z_pi3 for 3 classes, z_pi1 - z_pi2 for 2).
    """
    z = logits.sort(dim=1, descending=True).values
    c = z.shape[1]
    third, fourth = z[:, min(2, c - 1)], z[:, min(3, c - 1)]
    rows = torch.arange(logits.shape[0], device=logits.device)
    margin = logits[rows, y] - logits[rows, target]
    return -margin / (z[:, 0] - 0.5 * (third + fourth) + 1e-12)


def _start(
    x: torch.Tensor,
    eps: float,
    norm: Norm,
    indices: torch.Tensor,
    key: tuple[int, ...],
    lo: float,
    hi: float,
) -> torch.Tensor:
    if norm is Norm.linf:
        t = per_example_uniform(tuple(x.shape), indices, key).to(x.device, x.dtype) * 2 - 1
    else:
        t = per_example_normal(tuple(x.shape), indices, key).to(x.device, x.dtype)
    return (x + eps * unit(t, norm)).clamp(lo, hi)


def apgd_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    x0: torch.Tensor,
    *,
    eps: float,
    norm: Norm | str,
    steps: int = APGD_STEPS,
    rho: float = 0.75,
    momentum: float = 0.75,
    lo: float = 0.0,
    hi: float = 1.0,
    stop_when_all_broken: bool = False,
) -> APGDBatch:
    """One APGD run from the start ``x0`` (Algorithm 1 of the module docstring).

    Cost: steps + 1 forward-backward passes (one at the start, one per step); the
    loss and the correctness at every iterate come from those passes.

    Args:
        loss_fn: per-example loss of the logits, shape (N,), to maximise.
        x0: the start, inside the ball and [lo, hi].
        stop_when_all_broken: end early once every example is broken (for accuracy
            only: ``x_loss`` then stops improving).
    """
    norm = parse_norm(norm)
    n = x.shape[0]
    k = max(int(0.22 * steps), 1)
    k_min, k_decr = max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)

    x_cur = x0.detach().clone()
    loss, grad, miss = _evaluate(model, loss_fn, y, x_cur)
    broken, x_found = miss.clone(), x_cur.clone()
    x_best, loss_best, grad_best = x_cur.clone(), loss.clone(), grad.clone()
    eta = torch.full((n,), 2.0 * eps, device=x.device, dtype=x.dtype)
    x_prev = x_cur.clone()
    loss_prev = loss
    rises = torch.zeros(n, device=x.device)
    since_check = 0
    best_at_check = loss_best.clone()
    halved_at_check = torch.ones(n, dtype=torch.bool, device=x.device)
    for i in range(steps):
        a = 1.0 if i == 0 else momentum
        x_prev, x_cur = x_cur, _momentum_step(x, x_cur, x_prev, grad, eta, a, eps, norm, lo, hi)
        loss, grad, miss = _evaluate(model, loss_fn, y, x_cur)
        with torch.no_grad():
            # the first misclassified iterate, so that stopping early changes nothing
            # torch.where, not boolean-mask writes: a mask index waits for the device to
            # count the rows (a host sync per step on a GPU); the values are the same
            newly = miss & ~broken
            x_found = torch.where(bcast_rows(newly, x), x_cur, x_found)
            broken |= miss
            rises += (loss > loss_prev).to(rises.dtype)
            loss_prev = loss
            better = loss > loss_best
            x_best = torch.where(bcast_rows(better, x), x_cur, x_best)
            grad_best = torch.where(bcast_rows(better, x), grad, grad_best)
            loss_best = torch.where(better, loss, loss_best)
            since_check += 1
            if since_check == k:
                oscillating = rises <= k * rho
                stalled = ~halved_at_check & (best_at_check >= loss_best)
                halve = oscillating | stalled
                eta = torch.where(halve, eta / 2, eta)
                x_cur = torch.where(bcast_rows(halve, x), x_best, x_cur)
                grad = torch.where(bcast_rows(halve, x), grad_best, grad)
                halved_at_check, best_at_check = halve, loss_best.clone()
                rises.zero_()
                since_check = 0
                k = max(k - k_decr, k_min)
        if stop_when_all_broken and bool(broken.all()):
            break
    x_adv = torch.where(bcast_rows(broken, x), x_found, x_best)
    return APGDBatch(x_best.detach(), loss_best, broken, x_adv.detach())


def _evaluate(
    model: nn.Module, loss_fn: LossFn, y: torch.Tensor, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss per example, its gradient at ``z`` and whether ``z`` is misclassified."""
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(z)
        loss = loss_fn(logits)
        (g,) = torch.autograd.grad(loss.sum(), z)
    return loss.detach(), g.detach(), logits.argmax(1).detach() != y


@torch.no_grad()
def _momentum_step(
    x: torch.Tensor,
    x_cur: torch.Tensor,
    x_prev: torch.Tensor,
    grad: torch.Tensor,
    eta: torch.Tensor,
    a: float,
    eps: float,
    norm: Norm,
    lo: float,
    hi: float,
) -> torch.Tensor:
    """z = P(x_k + eta s(grad)); x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))."""
    direction = steepest_direction(grad, norm)
    z = project(x_cur + bcast_rows(eta, x) * direction, x, eps, norm, lo, hi)
    return project(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev), x, eps, norm, lo, hi)


def _prepare(
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: Norm | str,
    lo: float,
    hi: float,
    indices: torch.Tensor | None,
    index_offset: int,
    **counts: int,
) -> tuple[torch.Tensor, torch.Tensor, Norm, torch.Tensor]:
    """Both APGDs' checks and inputs: (x, y) detached, the norm, the global indices."""
    norm = check_threat_model(eps, norm, lo, hi)
    check_counts(**counts)
    idx = global_indices(x.shape[0], indices, index_offset)
    return x.detach(), y.detach(), norm, idx


def _cross_entropy(y: torch.Tensor) -> LossFn:
    return partial(F.cross_entropy, target=y, reduction="none")


def _seeded_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    indices: torch.Tensor,
    key: tuple[int, ...],
    budget: dict[str, Any],
    stop_when_all_broken: bool = False,
) -> APGDBatch:
    """One APGD run from the start drawn for these examples' global ``indices`` and
    ``key``; ``budget``: eps, norm, steps, lo, hi."""
    b = budget
    x0 = _start(x, b["eps"], b["norm"], indices, key, b["lo"], b["hi"])
    return apgd_run(model, x, y, loss_fn, x0, **budget, stop_when_all_broken=stop_when_all_broken)


@no_tf32()
def apgd_ce(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm | str = Norm.linf,
    steps: int = APGD_STEPS,
    restarts: int = 1,
    seed: int = 0,
    stream: int = 0,
    indices: torch.Tensor | None = None,
    index_offset: int = 0,
    lo: float = 0.0,
    hi: float = 1.0,
) -> APGDBatch:
    """APGD on cross-entropy. Restart r > 0 runs on the examples still robust.

    Args:
        model: classifier in eval mode on inputs in [lo, hi].
        x, y: one batch, on the model's device.
        eps, norm: the threat model.
        steps, restarts: iterations per run (original: 100) and runs.
        seed, stream: seed the starts with the examples' global indices.
        indices: global index of each example (default index_offset + arange(N)).

    Returns:
        :class:`APGDBatch`; ``loss`` is the cross-entropy at ``x_loss``.
    """
    x, y, norm, idx = _prepare(
        x, y, eps, norm, lo, hi, indices, index_offset, steps=steps, restarts=restarts
    )

    budget = {"eps": eps, "norm": norm, "steps": steps, "lo": lo, "hi": hi}
    key = (APGD_CE_TAG, seed, stream)
    out = _seeded_run(model, x, y, _cross_entropy(y), idx, (*key, 0), budget)
    for restart in range(1, restarts):
        todo = (~out.broken).nonzero().flatten()
        if todo.numel() == 0:
            break
        ys = y[todo]
        run = _seeded_run(
            model, x[todo], ys, _cross_entropy(ys), idx[todo.cpu()], (*key, restart), budget
        )
        better = run.loss > out.loss[todo]
        out.x_loss[todo[better]] = run.x_loss[better]
        out.loss[todo[better]] = run.loss[better]
        out.broken[todo] = run.broken
        out.x_adv[todo] = run.x_adv
    # a robust example's x_adv is its highest-loss point over all restarts
    out.x_adv = torch.where(bcast_rows(out.broken, x), out.x_adv, out.x_loss)
    return out


@no_tf32()
def apgd_targeted(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm | str = Norm.linf,
    steps: int = APGD_STEPS,
    restarts: int = 1,
    n_target_classes: int = TARGET_CLASSES,
    seed: int = 0,
    stream: int = 0,
    indices: torch.Tensor | None = None,
    index_offset: int = 0,
    lo: float = 0.0,
    hi: float = 1.0,
    clean_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD on the targeted DLR loss, towards each of the top ``n_target_classes`` wrong
    classes (ranked by clean logits) in turn, on the examples still robust.

    Args:
        clean_logits: the model's logits at x, if already computed (saves a forward).
        Others as :func:`apgd_ce`.

    Returns:
        (x_adv, broken): a misclassified point where one was found, else x; and the
        bool mask of broken examples.
    """
    x, y, norm, idx = _prepare(
        x,
        y,
        eps,
        norm,
        lo,
        hi,
        indices,
        index_offset,
        steps=steps,
        restarts=restarts,
        n_target_classes=n_target_classes,
    )
    if clean_logits is None:
        with torch.no_grad():
            clean_logits = model(x)
    n_classes = clean_logits.shape[1]
    if n_classes < 2:
        raise ConfigError(f"a targeted attack needs at least 2 classes, got {n_classes}")
    ranked = clean_logits.argsort(dim=1, descending=True)
    budget = {"eps": eps, "norm": norm, "steps": steps, "lo": lo, "hi": hi}
    x_adv = x.clone()
    broken = clean_logits.argmax(1) != y
    for rank in range(1, min(n_target_classes, n_classes - 1) + 1):
        for restart in range(restarts):
            todo = (~broken).nonzero().flatten()
            if todo.numel() == 0:
                return x_adv, broken
            ys, ts = y[todo], ranked[todo, rank]
            run = _seeded_run(
                model,
                x[todo],
                ys,
                partial(dlr_targeted_loss, y=ys, target=ts),
                idx[todo.cpu()],
                (APGD_T_TAG, seed, stream, rank, restart),
                budget,
                stop_when_all_broken=True,
            )
            x_adv[todo[run.broken]] = run.x_adv[run.broken]
            broken[todo] = run.broken
    return x_adv, broken
