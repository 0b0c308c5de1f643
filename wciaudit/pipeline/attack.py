"""The scan's attack stage: the attacks on both splits, which attack gave which figure,
and the gradient-masking checks (:mod:`wciaudit.attacks`).

Each process attacks its shard of each split; starts are seeded by the global example
index, so they depend on neither the shard nor the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from ..attacks import AttackOutcome, MaskingReport, masking_checks, run_attack
from ..attacks.autoattack import broken_counts
from ..attacks.masking import stochastic_output_check
from ..data import Splits
from ..metrics import accuracy
from ..result import AttackInfo
from ..retry import run_with_batch_retry
from .run import ScanRun

__all__ = ["AttackStage", "attack_stage", "masking", "split_of"]


@dataclass(frozen=True)
class AttackStage:
    """What the attack stage found: each split's outcome (this process's shard) and the
    record of the attacks, the masking checks included."""

    outcomes: dict[str, AttackOutcome]
    info: AttackInfo

    @property
    def loss_attack(self) -> str:
        """The loss-maximising attack, whose points the robust loss and Hessian are at."""
        return next(iter(self.outcomes.values())).loss_attack

    @property
    def points(self) -> dict[str, torch.Tensor]:
        """Each split's points of the loss-maximising attack (this process's shard)."""
        return {split: outcome.x_loss for split, outcome in self.outcomes.items()}


def split_of(splits: Splits, split: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(x, y) of the ``"train"`` or ``"test"`` split."""
    return (splits.x_train, splits.y_train) if split == "train" else (splits.x_test, splits.y_test)


def attack_stage(run: ScanRun, net: nn.Module, splits: Splits) -> AttackStage:
    """The attacks, their record and the masking checks (timed as two parts)."""
    with run.part("attack"):
        outcomes = _attack(run, net, splits)
    info = _attack_info(run, outcomes)
    with run.part("masking"):
        info.masking = masking(run, net, splits)
    return AttackStage(outcomes, info)


def _attack_shard(
    batch_size: int,
    *,
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    run: ScanRun,
    stream: int,
    offset: int,
    progress: Any,
) -> AttackOutcome:
    config = run.config.with_(batch_size=batch_size)
    return run_attack(
        net, x, y, config, run.device, stream=stream, index_offset=offset, progress=progress
    )


def _attack(run: ScanRun, net: nn.Module, splits: Splits) -> dict[str, AttackOutcome]:
    outcomes: dict[str, AttackOutcome] = {}
    for split, stream in (("train", 0), ("test", 1)):
        x, y = split_of(splits, split)
        if x is None or y is None:
            continue
        lo, hi = run.shard.bounds(x.shape[0])
        job = partial(
            _attack_shard,
            net=net,
            x=x[lo:hi],
            y=y[lo:hi],
            run=run,
            stream=stream,
            offset=lo,
            progress=run.ticker(f"attack-{split}", hi - lo),
        )
        outcomes[split] = run.batches.run(job)
    return outcomes


def _attack_info(run: ScanRun, outcomes: dict[str, AttackOutcome]) -> AttackInfo:
    """Which attack gave which figure, what broke the examples of each split, and the
    robust accuracy of the chosen attack and of the loss attack side by side."""
    any_outcome = next(iter(outcomes.values()))
    broken_by: dict[str, dict[str, int]] = {}
    robust_acc: dict[str, dict[str, float | None]] = {any_outcome.attack: {}}
    robust_acc.setdefault(any_outcome.loss_attack, {})
    for split, outcome in outcomes.items():
        codes = run.shard.gather_cat(outcome.broken_code)
        broken_by[split] = broken_counts(codes, outcome.stages)
        # one figure per attack: under PGD the loss attack is the attack itself
        by_attack = {outcome.loss_attack: outcome.loss_correct, outcome.attack: outcome.correct}
        for attack, correct in by_attack.items():
            acc, se = accuracy(run.shard.gather_cat(correct.double()))
            robust_acc[attack].update({split: acc, f"{split}_se": se})
    if any_outcome.skipped:
        ran = ", ".join(s for s in any_outcome.stages if s != "clean")
        skipped = "; ".join(f"{k} skipped: {v}" for k, v in any_outcome.skipped.items())
        run.notes.append(f"{any_outcome.attack} ran {ran}; {skipped}")
    return AttackInfo(
        accuracy_from=any_outcome.attack,
        loss_from=any_outcome.loss_attack,
        hessian_points_from=any_outcome.loss_attack,
        broken_by=broken_by,
        robust_acc=robust_acc,
        skipped=dict(any_outcome.skipped),
    )


def masking(run: ScanRun, net: nn.Module, splits: Splits) -> dict[str, Any]:
    """The gradient-masking checks on a stratified subset of the test split (train
    without one); the check for random output runs even when the others are off."""
    x, y = split_of(splits, "test" if splits.has_test else "train")
    stochastic = stochastic_output_check(net, x, run.device)
    if run.config.masking_samples == 0:
        report = MaskingReport([stochastic], 0, 1e-3)  # alpha: masking_checks' default
    else:
        # Square at 100 queries: a sanity check (a black-box attack this short must not
        # beat the white-box one), not AutoAttack's 5000, which cost seconds per example;
        # one batch of n examples: out of memory, they run on half as many (with a note)
        report, _n = run_with_batch_retry(
            lambda n: masking_checks(net, x, y, run.config, run.device, n=n, square_queries=100),
            run.config.masking_samples,
            on_retry=lambda failed, smaller, message: run.notes.append(
                f"masking checks: out of memory on {failed} examples; ran on {smaller} ({message})"
            ),
        )
        report.checks.insert(0, stochastic)
    for check in report.checks:
        if check.passed is None:
            run.notes.append(f"gradient-masking check {check.name} {check.detail}")
    if not stochastic.passed:
        run.notes.append(f"random output: {stochastic.detail}")
    failed = [c.name for c in report.checks if c.passed is False and c is not stochastic]
    if failed:
        run.notes.append(
            "possible gradient masking: " + ", ".join(failed) + " (see attacks.masking)"
        )
    return report.to_dict()
