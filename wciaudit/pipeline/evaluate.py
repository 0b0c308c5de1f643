"""The scan's evaluate stage: clean and robust loss and accuracy per split, and the
robust gap (SPEC: robust generalization gap), from the attack stage's outcomes."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from ..data import Splits
from ..metrics import per_example, robust_gap, split_figures
from ..result import Metrics
from .attack import AttackStage, split_of
from .run import ScanRun

__all__ = ["robust_figures"]


def _per_example(
    batch_size: int, *, net: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    return per_example(net, x, y, batch_size, device)


def robust_figures(run: ScanRun, net: nn.Module, splits: Splits, attacked: AttackStage) -> Metrics:
    """Clean and robust loss and accuracy per split (per-example values gathered in
    index order over processes), and the robust gap. Robust accuracy is the chosen
    attack's; the robust loss is at the loss-maximising attack's points."""
    figures = {}
    for split, outcome in attacked.outcomes.items():
        x, y = split_of(splits, split)
        lo, hi = run.shard.bounds(x.shape[0])
        job = partial(_per_example, net=net, x=x[lo:hi], y=y[lo:hi], device=run.device)
        losses, correct = run.batches.run(job)
        gather = run.shard.gather_cat
        figures[f"clean_{split}"] = split_figures(gather(losses), gather(correct))
        robust = gather(outcome.loss.double()), gather(outcome.correct.double())
        figures[f"robust_{split}"] = split_figures(*robust)
    return _metrics(figures)


def _metrics(figures: dict[str, Any]) -> Metrics:
    m = Metrics()
    for key, fig in figures.items():
        kind, split = key.split("_")
        setattr(m, f"{kind}_acc_{split}", fig.acc)
        setattr(m, f"{kind}_loss_{split}", fig.loss)
        setattr(m, f"{kind}_acc_{split}_se", fig.acc_se)
        setattr(m, f"{kind}_loss_{split}_se", fig.loss_se)
    if "robust_train" in figures and "robust_test" in figures:
        for k, v in robust_gap(figures["robust_train"], figures["robust_test"]).items():
            setattr(m, k, v)
    return m
