"""Clean and robust accuracy/loss, the empirical robust gap, and their standard errors.

SPEC: "Adversarial loss, robust metrics, robust gap".
    gap_loss = L_adv(T) - L_adv(S),   gap_err = robust_acc(S) - robust_acc(T)
Standard errors follow from the sample sizes: sd(per-example loss) / sqrt(n) for a
mean loss, sqrt(a (1 - a) / n) for an accuracy; the two splits are independent, so a
gap's SE is the root of the sum of the squared SEs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SplitFigures:
    """Mean accuracy and loss on one split, with per-example sums for SEs."""

    acc: float
    loss: float
    acc_se: float
    loss_se: float
    n: int


def per_example(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example cross-entropy and correctness (float64, CPU), model in eval mode."""
    dtype = next(model.parameters()).dtype
    losses, correct = [], []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(device, dtype)
            yb = y[i : i + batch_size].to(device)
            z = model(xb)
            losses.append(F.cross_entropy(z, yb, reduction="none").double().cpu())
            correct.append((z.argmax(1) == yb).double().cpu())
    return torch.cat(losses), torch.cat(correct)


def split_figures(losses: torch.Tensor, correct: torch.Tensor) -> SplitFigures:
    n = int(losses.numel())
    acc, acc_se = accuracy(correct)
    loss = float(losses.mean())
    loss_se = float(losses.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan
    return SplitFigures(acc=acc, loss=loss, acc_se=acc_se, loss_se=loss_se, n=n)


def accuracy(correct: torch.Tensor) -> tuple[float, float]:
    """The fraction of true entries of ``correct`` (bool or 0/1), and its SE
    sqrt(a (1 - a) / n); NaN for both when empty."""
    n = int(correct.numel())
    if n == 0:
        return math.nan, math.nan
    acc = float(correct.double().mean())
    return acc, math.sqrt(acc * (1 - acc) / n)


def robust_gap(train: SplitFigures, test: SplitFigures) -> dict[str, float]:
    """gap_loss, gap_err and their SEs from robust figures of S (train) and T (test)."""
    return {
        "gap_loss": test.loss - train.loss,
        "gap_err": train.acc - test.acc,
        "gap_loss_se": math.hypot(train.loss_se, test.loss_se),
        "gap_err_se": math.hypot(train.acc_se, test.acc_se),
    }
