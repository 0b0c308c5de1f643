"""PGD and FGSM (Madry et al. 2018; Goodfellow et al. 2015), as the SPEC's threat model says.

PGD-K on mean cross-entropy: uniform random start in the eps-ball, K steps of size
alpha (sign of the gradient for L-inf, normalised gradient for L2), projection onto the
ball intersected with [lo, hi] after each step. FGSM is one step with alpha = eps and no
random start.

Restarts follow the field's rule (Madry et al. 2018; Croce & Hein 2020): an example is
broken (counts against robust accuracy) if the final point of ANY restart is
misclassified; the robust loss keeps each example's WORST loss over the restarts. The
two can come from different restarts, so :func:`pgd_attack` returns both points.

Random starts are per example: example i's start depends only on (seed, stream, restart,
global index i) (:mod:`wciaudit.attacks.seeding`), so results do not depend on the batch
size, the device or the number of processes.

Example:
    >>> import torch
    >>> from wciaudit.config import ScanConfig
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    >>> x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    >>> x_adv = perturb(net, x, y, ScanConfig(eps=0.1, steps=3))
    >>> bool(((x_adv - x).abs() <= 0.1 + 1e-6).all())
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Attack, Norm, ScanConfig
from ..model import no_tf32
from .seeding import per_example_uniform
from .threat import bcast_rows, project, steepest_direction, unit

Progress = Callable[[int], None]

#: first element of every PGD start key, so that other attacks draw other starts
PGD_TAG = 1


def random_start_noise(
    shape: tuple[int, ...], start: int, seed: int, stream: int, restart: int
) -> torch.Tensor:
    """Uniform noise in [-1, 1) for examples ``start .. start + shape[0]`` of a stream.

    Row i is drawn from a generator seeded by (seed, stream, restart, start + i) alone,
    so an example's noise depends only on its index, not on batching or sharding.
    """
    n = shape[0]
    u = per_example_uniform(shape, range(start, start + n), key=(PGD_TAG, seed, stream, restart))
    return u * 2 - 1


def _start(x: torch.Tensor, cfg: ScanConfig, start: int, stream: int, restart: int) -> torch.Tensor:
    if cfg.attack is Attack.fgsm or cfg.eps == 0:
        return x.clone()
    u = random_start_noise(tuple(x.shape), start, cfg.seed, stream, restart).to(x.device, x.dtype)
    if cfg.norm is Norm.linf:
        return project(x + cfg.eps * u, x, cfg.eps, cfg.norm, cfg.lo, cfg.hi)
    # L2: a point of the ball, radius scaled by the uniform magnitude of the noise
    direction = unit(u, Norm.l2)
    radius = bcast_rows(u.flatten(1).abs().mean(dim=1), x)
    return project(x + cfg.eps * radius * direction, x, cfg.eps, cfg.norm, cfg.lo, cfg.hi)


@dataclass
class PGDBatch:
    """PGD's outcome on one batch (all tensors detached, on the batch's device).

    Attributes:
        x_loss: each example's worst-loss point over the restarts (robust loss, Hessian).
        loss: cross-entropy at ``x_loss``, shape (N,), or None when not evaluated.
        correct: True where no restart's final point is misclassified, shape (N,) bool,
            or None when not evaluated.
        x_adv: a misclassified final point where a restart found one, else ``x_loss``.
    """

    x_loss: torch.Tensor
    loss: torch.Tensor | None
    correct: torch.Tensor | None
    x_adv: torch.Tensor


def descend(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, cfg: ScanConfig
) -> torch.Tensor:
    """``cfg.effective_steps`` steps of size ``cfg.alpha`` from ``x_adv``, each projected
    onto the ball of radius ``cfg.eps`` around ``x`` and into [lo, hi]; no restart, no
    random start (the caller gives the start). ``cfg``'s threat model must be set."""
    alpha = cfg.alpha
    for _ in range(cfg.effective_steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            step = alpha * steepest_direction(grad, cfg.norm)
            x_adv = project(x_adv.detach() + step, x, cfg.eps, cfg.norm, cfg.lo, cfg.hi)
    return x_adv


@no_tf32()
def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ScanConfig,
    *,
    start: int = 0,
    stream: int = 0,
    evaluate: bool = True,
) -> PGDBatch:
    """PGD (or FGSM) on one batch, with the restart rule of the module docstring.

    Cost: R * K forward-backward passes plus R forward passes at the final points (these
    give the loss and correctness, so no separate evaluation pass is needed). With
    ``evaluate=False`` and one restart the last forward is skipped and ``loss`` and
    ``correct`` are None.

    Args:
        model: classifier in eval mode, taking inputs in [cfg.lo, cfg.hi].
        x: inputs, shape (N, ...), on the model's device.
        y: integer labels, shape (N,).
        cfg: eps, attack, norm, steps, alpha, restarts, seed, lo, hi.
        start: global index of x[0] in its split (seeds the random starts).
        stream: which split (0 train, 1 test), so the two splits get different starts.
        evaluate: compute loss and correctness at the returned points.
    """
    cfg = cfg.with_default_threat_model()  # unset: the defaults (no checkpoint here)
    x = x.detach()
    restarts = cfg.effective_restarts
    if cfg.eps == 0:
        x_adv = x.clone()
        if not evaluate:
            return PGDBatch(x_adv, None, None, x_adv)
        with torch.no_grad():
            logits = model(x_adv)
        loss, correct = F.cross_entropy(logits, y, reduction="none"), logits.argmax(1) == y
        return PGDBatch(x_adv, loss, correct, x_adv)
    if restarts == 1 and not evaluate:
        x_adv = descend(model, x, y, _start(x, cfg, start, stream, 0), cfg).detach()
        return PGDBatch(x_adv, None, None, x_adv)

    def final_point(restart: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_r = descend(model, x, y, _start(x, cfg, start, stream, restart), cfg)
        with torch.no_grad():
            logits = model(x_r)
        return x_r.detach(), F.cross_entropy(logits, y, reduction="none"), logits.argmax(1) == y

    x_loss, best_loss, correct = final_point(0)
    x_adv_found = x_loss.clone()
    for restart in range(1, restarts):
        x_r, loss_r, correct_r = final_point(restart)
        better = loss_r > best_loss
        x_loss[better] = x_r[better]
        best_loss = torch.where(better, loss_r, best_loss)
        # keep the first restart that broke an example
        newly = correct & ~correct_r
        x_adv_found[newly] = x_r[newly]
        correct = correct & correct_r
    x_adv = torch.where(bcast_rows(correct, x), x_loss, x_adv_found)
    return PGDBatch(x_loss.detach(), best_loss, correct, x_adv.detach())


@no_tf32()
def perturb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ScanConfig,
    *,
    start: int = 0,
    stream: int = 0,
) -> torch.Tensor:
    """Each example's worst-loss PGD point over the restarts (the robust-loss points).

    For robust accuracy under restarts use :func:`pgd_attack` (an example is broken if
    any restart breaks it, which this point alone does not show).

    Returns:
        x_adv with ||x_adv - x|| <= eps and lo <= x_adv <= hi, detached.
    """
    cfg = cfg.with_default_threat_model()  # unset: the defaults (no checkpoint here)
    return pgd_attack(model, x, y, cfg, start=start, stream=stream, evaluate=False).x_loss


@no_tf32()
def attack_split(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ScanConfig,
    device: torch.device,
    *,
    stream: int = 0,
    index_offset: int = 0,
    progress: Progress | None = None,
) -> torch.Tensor:
    """:func:`perturb` over a whole split batch by batch; returns x_adv on the CPU.

    Args:
        index_offset: global index of x[0] (a shard's first example under torchrun).
        progress: called with the number of examples done after each batch.
    """
    cfg = cfg.with_default_threat_model()  # unset: the defaults (no checkpoint here)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    out = torch.empty_like(x, dtype=dtype)
    for i in range(0, x.shape[0], cfg.batch_size):
        xb = x[i : i + cfg.batch_size].to(device, dtype)
        yb = y[i : i + cfg.batch_size].to(device)
        out[i : i + xb.shape[0]] = perturb(
            model, xb, yb, cfg, start=index_offset + i, stream=stream
        ).cpu()
        if progress is not None:
            progress(xb.shape[0])
    return out
