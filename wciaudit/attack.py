"""PGD and FGSM (Madry et al. 2018; Goodfellow et al. 2015), as the SPEC's threat model says.

PGD-K on mean cross-entropy: uniform random start in the eps-ball, K steps of size
alpha (sign of the gradient for L-inf, normalised gradient for L2), projection onto the
ball intersected with [lo, hi] after each step; R restarts keep each example's worst
loss. FGSM is one step with alpha = eps and no random start.

Random starts are drawn per block of 256 examples from a generator seeded by
(seed, stream, restart, block), on the CPU: the same seed gives the same starts
whatever the batch size, the device or the number of processes.

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

import torch
import torch.nn.functional as F
from torch import nn

from .config import Attack, Norm, ScanConfig

_BLOCK = 256
Progress = Callable[[int], None]


def _block_generator(seed: int, stream: int, restart: int, block: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    # a fixed mixing of the four integers; any collision-free map would do
    g.manual_seed((seed * 1_000_003 + stream * 10_007 + restart * 101 + block) % (2**63 - 1))
    return g


def random_start_noise(
    shape: tuple[int, ...], start: int, seed: int, stream: int, restart: int
) -> torch.Tensor:
    """Uniform noise in [-1, 1] for examples ``start .. start + shape[0]`` of a stream.

    Drawn per 256-example block from a seeded CPU generator, so an example's noise
    depends only on its index, not on how the data is batched or sharded.
    """
    n = shape[0]
    rest = tuple(shape[1:])
    first, last = start // _BLOCK, (start + n - 1) // _BLOCK
    parts = []
    for block in range(first, last + 1):
        g = _block_generator(seed, stream, restart, block)
        noise = torch.rand((_BLOCK, *rest), generator=g) * 2 - 1
        lo = max(start, block * _BLOCK) - block * _BLOCK
        hi = min(start + n, (block + 1) * _BLOCK) - block * _BLOCK
        parts.append(noise[lo:hi])
    return torch.cat(parts)


def _project(x_adv: torch.Tensor, x: torch.Tensor, cfg: ScanConfig) -> torch.Tensor:
    if cfg.norm is Norm.linf:
        x_adv = torch.max(torch.min(x_adv, x + cfg.eps), x - cfg.eps)
    else:
        d = x_adv - x
        norms = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        factor = (cfg.eps / norms).clamp(max=1.0).view(-1, *([1] * (x.dim() - 1)))
        x_adv = x + d * factor
    return x_adv.clamp(cfg.lo, cfg.hi)


def _start(x: torch.Tensor, cfg: ScanConfig, start: int, stream: int, restart: int) -> torch.Tensor:
    if cfg.attack is Attack.fgsm or cfg.eps == 0:
        return x.clone()
    u = random_start_noise(tuple(x.shape), start, cfg.seed, stream, restart).to(x.device, x.dtype)
    if cfg.norm is Norm.linf:
        return _project(x + cfg.eps * u, x, cfg)
    # L2: a point of the ball, radius scaled by the uniform magnitude of the noise
    direction = u / u.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    radius = u.flatten(1).abs().mean(dim=1).view(-1, *([1] * (x.dim() - 1)))
    return _project(x + cfg.eps * radius * direction, x, cfg)


def perturb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ScanConfig,
    *,
    start: int = 0,
    stream: int = 0,
) -> torch.Tensor:
    """Adversarial examples for one batch.

    Args:
        model: classifier in eval mode, taking inputs in [cfg.lo, cfg.hi].
        x: inputs, shape (N, ...), on the model's device.
        y: integer labels, shape (N,).
        cfg: eps, attack, norm, steps, alpha, restarts, seed, lo, hi.
        start: global index of x[0] in its split (seeds the random start).
        stream: which split (0 train, 1 test), so the two splits get different starts.

    Returns:
        x_adv with ||x_adv - x|| <= eps and lo <= x_adv <= hi, detached.
    """
    x = x.detach()
    if cfg.eps == 0:
        return x.clone()
    best = x.clone()
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device, dtype=x.dtype)
    alpha = cfg.alpha
    for restart in range(cfg.effective_restarts):
        x_adv = _start(x, cfg, start, stream, restart)
        for _ in range(cfg.effective_steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(x_adv), y)
                (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                if cfg.norm is Norm.linf:
                    step = alpha * grad.sign()
                else:
                    g = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
                    step = alpha * grad / g.view(-1, *([1] * (x.dim() - 1)))
                x_adv = _project(x_adv.detach() + step, x, cfg)
        with torch.no_grad():
            loss_i = F.cross_entropy(model(x_adv), y, reduction="none")
            better = loss_i > best_loss
            best[better] = x_adv[better]
            best_loss = torch.where(better, loss_i, best_loss)
    return best.detach()


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
    """Attack a whole split batch by batch; returns x_adv on the CPU.

    Args:
        index_offset: global index of x[0] (a shard's first example under torchrun).
        progress: called with the number of examples done after each batch.
    """
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
