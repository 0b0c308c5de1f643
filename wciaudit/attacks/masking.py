"""Gradient-masking checks (Athalye, Carlini & Wagner 2018; Carlini et al. 2019, "On
Evaluating Adversarial Robustness", section 5), cheap versions on a subset.

On a stratified seeded subset (64 examples by default), with the scan's eps and norm:

(a) ``more-steps``: PGD-4K with 2 restarts must not leave robust examples that PGD-K broke
    more often than the reverse.
(b) ``fgsm-vs-pgd``: FGSM must not break examples that white-box PGD (K and 4K, any
    run) leaves robust more often than the reverse.
(c) ``square-vs-whitebox``: the black-box Square attack likewise (skipped, with the
    reason, where Square cannot attack the inputs' shape: see
    :func:`~wciaudit.attacks.square.square_skip_reason`; signals and vectors are
    attacked with one-dimensional windows).
(d) ``large-eps``: PGD from x (no random start, which alone could break a masked model
    by chance) at eps = half the data range (L-inf; L2: half the range times sqrt(d))
    must bring accuracy down to chance, 1/C, or below.

Beside them, :func:`stochastic_output_check` (``deterministic-output``), run once per scan
whether or not (a)-(d) are: two identical forward passes must give the same logits; a
model whose eval-mode output is random passes the others by luck or fails them by noise.

(a)-(c) compare the same examples, so they are paired: with b examples only the weaker
attack breaks and c only the stronger one does, the check fails when the exact one-sided
sign test P(Binomial(b + c, 1/2) >= b) is below ``alpha`` (default 0.001; a masked model
fails by many examples, a normal one passes with near certainty). (d) fails when
P(Binomial(n, 1/C) >= k) < alpha for k examples still correct.

Example:
    >>> round(sign_test_p(10, 0), 6), sign_test_p(0, 5)
    (0.000977, 1.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import Attack, Norm, ScanConfig
from ..data import stratified_subset
from .pgd import descend, pgd_attack
from .seeding import mix
from .square import square_attack, square_skip_reason


@dataclass
class MaskingCheck:
    """One check: ``passed`` is None when it was skipped (``detail`` says why)."""

    name: str
    passed: bool | None
    detail: str
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class MaskingReport:
    """The checks, the subset they ran on, and whether any failed."""

    checks: list[MaskingCheck]
    n: int
    alpha: float

    @property
    def flagged(self) -> bool:
        return any(c.passed is False for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "flagged": self.flagged,
            "n": self.n,
            "alpha": self.alpha,
            "checks": [asdict(c) for c in self.checks],
        }


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return min(1.0, sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def sign_test_p(b: int, c: int) -> float:
    """One-sided exact sign test on paired outcomes: P(B >= b), B ~ Binomial(b + c, 1/2)."""
    return binomial_tail(b, b + c, 0.5)


def _paired(
    name: str,
    weak_broken: torch.Tensor,
    strong_broken: torch.Tensor,
    weak: str,
    strong: str,
    alpha: float,
) -> MaskingCheck:
    b = int((weak_broken & ~strong_broken).sum())
    c = int((strong_broken & ~weak_broken).sum())
    p = sign_test_p(b, c)
    n = weak_broken.numel()
    acc_weak, acc_strong = (
        1 - float(weak_broken.float().mean()),
        1 - float(strong_broken.float().mean()),
    )
    passed = p >= alpha
    detail = (
        f"{weak} robust accuracy {acc_weak:.3f} vs {strong} {acc_strong:.3f} on {n}: "
        f"{b} broken by {weak} only, {c} by {strong} only (one-sided p = {p:.2g})"
    )
    if not passed:
        detail += f"; {weak} beats {strong}: gradients look masked"
    return MaskingCheck(
        name,
        passed,
        detail,
        {
            f"acc_{weak}": acc_weak,
            f"acc_{strong}": acc_strong,
            "only_weak": b,
            "only_strong": c,
            "p": p,
        },
    )


def masking_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ScanConfig,
    device: torch.device | str = "cpu",
    *,
    n: int = 64,
    alpha: float = 1e-3,
    stream: int = 1,
    square: bool = True,
    square_queries: int = 1000,
) -> MaskingReport:
    """Run checks (a)-(d) of the module docstring on a subset of (x, y).

    Args:
        model: classifier in eval mode, on ``device``.
        x, y: a split (the test split by default); a stratified subset of ``n`` examples,
            seeded with ``cfg.seed``, is used.
        cfg: eps, norm, steps K, lo/hi, seed, dtype.
        alpha: significance level of each check.
        stream: seeds the starts apart from the scan's own (default: the test stream).
        square: run check (c), Square against the white-box attacks.
        square_queries: Square's query budget here (the full AutoAttack uses 5000).

    Cost on n examples: 9K + 21 forward-backward passes (K = cfg.steps, at least 20 for
    (d)), plus Square's queries.
    """
    cfg = cfg.with_default_threat_model()  # unset: the defaults (no checkpoint here)
    device = torch.device(device)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    idx = stratified_subset(y, n, cfg.seed) if y.shape[0] > n else torch.arange(y.shape[0])
    xs, ys = x[idx].to(device, dtype), y[idx].to(device)
    base = cfg.with_(attack=Attack.pgd, restarts=1, step_size=None)
    with torch.no_grad():
        n_classes = int(model(xs[:1]).shape[1])
    start = 0  # the subset's own indices: the checks' starts differ from the scan's by stream

    pgd_k = pgd_attack(model, xs, ys, base, start=start, stream=stream + 2)
    pgd_more = pgd_attack(
        model, xs, ys, base.with_(steps=4 * cfg.steps, restarts=2), start=start, stream=stream + 4
    )
    fgsm = pgd_attack(model, xs, ys, base.with_(attack=Attack.fgsm), start=start, stream=stream + 2)
    white = ~pgd_k.correct | ~pgd_more.correct
    checks = [
        _paired(
            "more-steps",
            ~pgd_k.correct,
            ~pgd_more.correct,
            f"pgd-{cfg.steps}",
            f"pgd-{4 * cfg.steps}x2",
            alpha,
        ),
        _paired("fgsm-vs-pgd", ~fgsm.correct, white, "fgsm", "pgd", alpha),
    ]

    if square:
        checks.append(_square_check(model, xs, ys, cfg, white, alpha, square_queries, stream))

    checks.append(_large_eps_check(model, xs, ys, base, n_classes, alpha))
    return MaskingReport(checks, int(xs.shape[0]), alpha)


def _large_eps_check(
    model: nn.Module,
    xs: torch.Tensor,
    ys: torch.Tensor,
    base: ScanConfig,
    n_classes: int,
    alpha: float,
) -> MaskingCheck:
    """(d): PGD from x itself at half the data range must reach chance accuracy."""
    cfg = base
    big = 0.5 * (cfg.hi - cfg.lo)
    if cfg.norm is Norm.l2:
        big *= math.sqrt(xs[0].numel())
    steps = max(20, cfg.steps)
    big_cfg = base.with_(eps=big, steps=steps)
    x_big = descend(model, xs, ys, xs.clone(), big_cfg)
    with torch.no_grad():
        k = int((model(x_big).argmax(1) == ys).sum())
    p = binomial_tail(k, xs.shape[0], 1 / n_classes)
    acc = k / xs.shape[0]
    detail = (
        f"PGD-{steps} from x at eps {big:.3g} ({cfg.norm.value}) leaves accuracy {acc:.3f} "
        f"on {xs.shape[0]}, chance 1/{n_classes} = {1 / n_classes:.3f} (one-sided p = {p:.2g})"
    )
    passed = p >= alpha
    if not passed:
        detail += "; an unbounded-looking attack fails: gradients look masked"
    return MaskingCheck(
        "large-eps", passed, detail, {"eps": big, "acc": acc, "chance": 1 / n_classes, "p": p}
    )


def _square_check(
    model: nn.Module,
    xs: torch.Tensor,
    ys: torch.Tensor,
    cfg: ScanConfig,
    white: torch.Tensor,
    alpha: float,
    queries: int,
    stream: int,
) -> MaskingCheck:
    reason = square_skip_reason(tuple(xs.shape), cfg.norm.value)
    if reason is not None:
        # a check that cannot run on these inputs is skipped, never fails the scan
        return MaskingCheck("square-vs-whitebox", None, f"skipped: {reason}")
    x_sq = square_attack(
        model,
        xs,
        ys,
        eps=cfg.eps,
        norm=cfg.norm.value,
        n_queries=queries,
        seed=mix(cfg.seed, stream + 6),
        lo=cfg.lo,
        hi=cfg.hi,
    )
    with torch.no_grad():
        sq_broken = model(x_sq).argmax(1) != ys
    return _paired("square-vs-whitebox", sq_broken, white, "square", "whitebox", alpha)


STOCHASTIC_OUTPUT = "deterministic-output"
"""The name of :func:`stochastic_output_check` among the masking checks."""

STOCHASTIC_MEANING = (
    "the model's output is random (dropout left on, or a randomized defense): every figure "
    "is one random draw and the attacks' gradients are noisy, which looks like robustness"
)


def stochastic_output_check(
    model: nn.Module, x: torch.Tensor, device: torch.device | str = "cpu", *, n: int = 8
) -> MaskingCheck:
    """Two identical forward passes on the first ``n`` examples must give the same logits.

    A model in eval mode whose outputs still differ between two passes (dropout applied
    regardless of the mode, noise added to the input, a randomized defense) makes every
    figure of the scan a random draw and the attacks' gradients noisy; AutoAttack flags
    the same as randomized output (Croce & Hein 2020). The passes fail the check when
    their logits differ by more than ``64 * eps(dtype) * max(1, max |logit|)``, which
    rounding in a deterministic model stays far below and sampled noise far above.
    Torch's random state is forked, so the check draws nothing from the scan's stream.

    Args:
        model: classifier in eval mode, on ``device``, in the dtype of ``x``'s examples.
        x: inputs of a split, in the data range; the first ``n`` are used.
        device: where ``model`` is.
        n: examples per pass.

    Returns:
        A :class:`MaskingCheck` named ``"deterministic-output"`` with figures
        ``max_diff`` (largest absolute logit difference), ``changed`` (examples whose
        predicted class changed) and ``n``.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)).eval()
        >>> stochastic_output_check(net, torch.rand(8, 4)).passed
        True
    """
    device = torch.device(device)
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    xs = x[:n].to(device, dtype)
    gpus = []
    if device.type == "cuda":
        gpus = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=gpus), torch.no_grad():
        first, second = model(xs), model(xs)
    max_diff = float((first - second).abs().max()) if first.numel() else 0.0
    scale = max(1.0, float(first.abs().max())) if first.numel() else 1.0
    tol = 64 * torch.finfo(first.dtype).eps * scale
    changed = int((first.argmax(1) != second.argmax(1)).sum()) if first.dim() == 2 else 0
    figures = {"max_diff": max_diff, "changed": changed, "n": int(xs.shape[0])}
    words = f"two identical forward passes on {xs.shape[0]} examples"
    if max_diff <= tol:
        detail = f"{words} give the same logits (largest difference {max_diff:.2g})"
        return MaskingCheck(STOCHASTIC_OUTPUT, True, detail, figures)
    detail = (
        f"{words} differ by up to {max_diff:.3g} in a logit, {changed} predictions changed: "
        f"{STOCHASTIC_MEANING}"
    )
    return MaskingCheck(STOCHASTIC_OUTPUT, False, detail, figures)
