"""AutoAttack (Croce & Hein 2020, version "standard") and the attack a scan runs.

AutoAttack: APGD-CE -> APGD-T -> FAB-T -> Square (5000 queries), each stage run only on
the examples every earlier stage left robust, with the original settings: 100 APGD
iterations, 9 target classes (at most C - 1), one restart each. Robust accuracy is the
fraction never broken. Under every attack, PGD and FGSM included, an example the model
misclassifies as it is counts as broken by "clean", not by the attack (the field's rule:
robust accuracy is at most clean accuracy). A stage that cannot run on the inputs'
shape (Square on volumes or videos, inputs of rank 5 or more) is left out and named, with its reason,
in :attr:`AttackOutcome.skipped`.

:func:`run_attack` runs the attack chosen for robust accuracy and, from the same or a
separate run, a loss-maximising attack (PGD or APGD-CE) whose points carry the robust
loss and the Hessian (SPEC: L_adv). Where the chosen attack starts with the loss
attack (``pgd`` with ``pgd``, ``apgd-ce`` or ``autoattack`` with ``apgd-ce``) the one run
serves both: APGD-CE then also runs on the examples misclassified clean, for their loss.
:class:`AttackOutcome` records which attack produced which figure, and keeps the loss
attack's own robust accuracy (``loss_correct``) so that both can be reported side by side;
where the loss attack is a stage of the chosen one (APGD-CE in AutoAttack) this costs
nothing, as the stage has run on every example anyway.

Example:
    >>> import torch
    >>> from wciaudit.config import ScanConfig
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    >>> x, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    >>> out = run_attack(net, x, y, ScanConfig(eps=0.1), attack="apgd-ce",
    ...                  budget=AutoAttackSettings(apgd_steps=5))
    >>> out.attack, out.loss_attack, len(out.broken_by)
    ('apgd-ce', 'apgd-ce', 6)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import ScanConfig
from ..errors import ConfigError
from ..model import no_tf32
from .apgd import APGD_STEPS, TARGET_CLASSES, apgd_ce, apgd_targeted
from .fab import FAB_STEPS, fab_targeted
from .pgd import pgd_attack
from .seeding import mix
from .square import SQUARE_QUERIES, square_attack, square_skip_reason
from .threat import bcast_rows

Progress = Callable[[int], None]

#: attacks for robust accuracy; each example's ``broken_by`` names one of STAGES or None
ATTACKS = ("pgd", "fgsm", "apgd-ce", "apgd-t", "autoattack")
#: attacks whose points give the robust loss and the Hessian
LOSS_ATTACKS = ("pgd", "fgsm", "apgd-ce")
STAGES = ("clean", "pgd", "fgsm", "apgd-ce", "apgd-t", "fab-t", "square")
#: the stages of AutoAttack "standard", in order
AUTOATTACK_STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")


@dataclass
class AttackOutcome:
    """What the attacks found on a split (tensors on the CPU, in the split's order).

    Attributes:
        x_loss: points for the robust loss and the Hessian, from ``loss_attack``.
        loss: cross-entropy at ``x_loss`` per example, shape (N,).
        correct: True where ``attack`` left the example correctly classified, (N,) bool.
        loss_correct: the same for ``loss_attack`` alone (equal to ``correct`` when the
            two attacks are one), (N,) bool.
        broken_code: index into :data:`STAGES` of the stage that first broke each
            example, -1 where none did; shape (N,) int64 (gathers like any tensor).
        x_adv: the chosen attack's points: the misclassified one where found.
        attack: the attack robust accuracy comes from.
        loss_attack: the attack the robust loss and the Hessian points come from.
        stages: the stages ``attack`` ran, in order.
        skipped: the stages of ``attack`` that could not run on these inputs, each with
            its reason (Square on inputs that are not images, signals or vectors).
    """

    x_loss: torch.Tensor
    loss: torch.Tensor
    correct: torch.Tensor
    loss_correct: torch.Tensor
    broken_code: torch.Tensor
    x_adv: torch.Tensor
    attack: str
    loss_attack: str
    stages: tuple[str, ...] = field(default_factory=tuple)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def broken_by(self) -> list[str | None]:
        """Per example, the stage that first broke it, or None."""
        return [None if c < 0 else STAGES[c] for c in self.broken_code.tolist()]

    def broken_counts(self) -> dict[str, int]:
        """How many examples each stage broke first (stages that ran, plus "clean")."""
        return broken_counts(self.broken_code, self.stages)

    @property
    def robust_accuracy(self) -> float:
        return float(self.correct.float().mean()) if self.correct.numel() else float("nan")

    @property
    def loss_attack_accuracy(self) -> float:
        """Robust accuracy under ``loss_attack`` alone."""
        return float(self.loss_correct.float().mean()) if self.correct.numel() else float("nan")


@dataclass(frozen=True)
class AutoAttackSettings:
    """AutoAttack's budgets; the defaults are the original's (Croce & Hein 2020)."""

    apgd_steps: int = APGD_STEPS
    n_target_classes: int = TARGET_CLASSES
    n_queries: int = SQUARE_QUERIES
    fab_steps: int = FAB_STEPS


def broken_counts(broken_code: torch.Tensor, stages: tuple[str, ...]) -> dict[str, int]:
    """How many examples each stage broke first, from codes into :data:`STAGES` (e.g.
    gathered from every process), for the stages that ran plus "clean"."""
    names = ("clean", *stages) if "clean" not in stages else stages
    return {s: int((broken_code == STAGES.index(s)).sum()) for s in names}


def _stages(attack: str, skipped: dict[str, str] | None = None) -> tuple[str, ...]:
    if attack != "autoattack":
        return ("clean", attack)
    return ("clean", *(s for s in AUTOATTACK_STAGES if s not in (skipped or {})))


def skipped_stages(attack: str, shape: tuple[int, ...], norm: str) -> dict[str, str]:
    """The stages of ``attack`` that cannot run on inputs of ``shape`` (N first) under
    ``norm``, each with its reason: Square where :func:`square_skip_reason` says so."""
    reason = square_skip_reason(shape, norm) if attack == "autoattack" else None
    return {} if reason is None else {"square": reason}


def _check_names(attack: str, loss_attack: str) -> None:
    if attack not in ATTACKS:
        raise ConfigError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
    if loss_attack not in LOSS_ATTACKS:
        raise ConfigError(
            f"loss attack must be one of {', '.join(LOSS_ATTACKS)}, got {loss_attack!r}"
        )


def _default_loss_attack(attack: str) -> str:
    return attack if attack in ("pgd", "fgsm") else "apgd-ce"


def autoattack_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    seed: int = 0,
    stream: int = 0,
    indices: torch.Tensor | None = None,
    lo: float = 0.0,
    hi: float = 1.0,
    budget: AutoAttackSettings = AutoAttackSettings(),
    stages: tuple[str, ...] = AUTOATTACK_STAGES,
) -> dict[str, torch.Tensor]:
    """AutoAttack's stages on one batch (see the module docstring), at ``budget``'s
    steps, targets and queries.

    Returns:
        ``x_adv``, ``broken_code`` (index into :data:`STAGES`, -1 robust), and from the
        APGD-CE stage (run on every example) ``x_loss``, ``loss`` (cross-entropy) and
        ``loss_correct`` (APGD-CE's own robust examples), None when APGD-CE is not among
        ``stages``.
    """
    x, y = x.detach(), y.detach()
    idx = torch.arange(x.shape[0]) if indices is None else torch.as_tensor(indices).cpu()
    with torch.no_grad():
        clean_logits = model(x)
    code = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
    code[clean_logits.argmax(1) != y] = STAGES.index("clean")
    x_adv = x.clone()
    out: dict[str, torch.Tensor | None] = {"x_loss": None, "loss": None, "loss_correct": None}
    common = {"eps": eps, "norm": norm, "seed": seed, "lo": lo, "hi": hi}
    for stage in stages:
        robust = code < 0
        if stage == "apgd-ce":
            # every example, so that the clean-misclassified ones get a loss point too
            run = apgd_ce(
                model, x, y, steps=budget.apgd_steps, stream=stream, indices=idx, **common
            )
            out["x_loss"], out["loss"] = run.x_loss, run.loss
            newly = robust & run.broken
            x_adv[newly] = run.x_adv[newly]
            # APGD-CE's own robust accuracy, reported beside the composition's
            out["loss_correct"] = robust & ~run.broken
        else:
            todo = robust.nonzero().flatten()
            if todo.numel() == 0:
                break
            xs, ys = x[todo], y[todo]
            xs_adv = _later_stage(
                model, stage, xs, ys, idx[todo.cpu()], clean_logits[todo], stream, budget, common
            )
            with torch.no_grad():
                hit = model(xs_adv).argmax(1) != ys
            newly = torch.zeros_like(robust)
            newly[todo[hit]] = True
            x_adv[newly] = xs_adv[hit]
        code[newly] = STAGES.index(stage)
    out["x_adv"], out["broken_code"] = x_adv, code
    return out


def _later_stage(
    model: nn.Module,
    stage: str,
    xs: torch.Tensor,
    ys: torch.Tensor,
    indices: torch.Tensor,
    clean_logits: torch.Tensor,
    stream: int,
    budget: AutoAttackSettings,
    common: dict[str, Any],
) -> torch.Tensor:
    """One stage after APGD-CE on the still-robust examples ``xs``: their points."""
    targets = budget.n_target_classes
    if stage == "apgd-t":
        xs_adv, _ = apgd_targeted(
            model,
            xs,
            ys,
            steps=budget.apgd_steps,
            n_target_classes=targets,
            stream=stream,
            indices=indices,
            clean_logits=clean_logits,
            **common,
        )
        return xs_adv
    # FAB-T and Square take no stream: fold it into the seed so train and test differ
    common = {**common, "seed": mix(common["seed"], stream), "indices": indices}
    if stage == "fab-t":
        return fab_targeted(
            model, xs, ys, n_target_classes=targets, steps=budget.fab_steps, **common
        )
    if stage == "square":
        return square_attack(model, xs, ys, n_queries=budget.n_queries, **common)
    raise ConfigError(f"unknown AutoAttack stage {stage!r}")


def _attack_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ScanConfig,
    attack: str,
    loss_attack: str,
    start: int,
    stream: int,
    budget: AutoAttackSettings,
    stages: tuple[str, ...],
) -> dict[str, torch.Tensor]:
    if attack in ("pgd", "fgsm"):
        out = _pgd_batch(model, x, y, cfg, attack, start, stream, keep_loss=loss_attack == attack)
    else:
        out = autoattack_batch(
            model,
            x,
            y,
            eps=cfg.eps,
            norm=cfg.norm.value,
            seed=cfg.seed,
            stream=stream,
            indices=torch.arange(start, start + x.shape[0]),
            lo=cfg.lo,
            hi=cfg.hi,
            budget=budget,
            stages=stages,
        )
        if loss_attack != "apgd-ce":
            out.update(x_loss=None, loss=None, loss_correct=None)
    if out["x_loss"] is None:
        x_loss, loss, broken = _loss_attack(
            model, x, y, cfg, loss_attack, start, stream, budget.apgd_steps
        )
        clean = out["broken_code"] != STAGES.index("clean")
        out.update(x_loss=x_loss, loss=loss, loss_correct=clean & ~broken)
    return out


def _pgd_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ScanConfig,
    attack: str,
    start: int,
    stream: int,
    *,
    keep_loss: bool,
) -> dict[str, torch.Tensor | None]:
    """PGD or FGSM for robust accuracy: examples misclassified as they are count as
    broken by "clean" and keep x; with ``keep_loss`` the same run gives the loss points."""
    res = pgd_attack(model, x, y, cfg.with_(attack=attack), start=start, stream=stream)
    with torch.no_grad():
        clean_wrong = model(x).argmax(1) != y
    code = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
    code[~res.correct] = STAGES.index(attack)
    code[clean_wrong] = STAGES.index("clean")
    out = {
        "x_adv": torch.where(bcast_rows(clean_wrong, x), x, res.x_adv),
        "broken_code": code,
        "x_loss": None,
        "loss": None,
        "loss_correct": None,
    }
    if keep_loss:
        out.update(x_loss=res.x_loss, loss=res.loss, loss_correct=code < 0)
    return out


def _loss_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ScanConfig,
    loss_attack: str,
    start: int,
    stream: int,
    apgd_steps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss-maximising attack run on its own: (x_loss, loss, broken)."""
    if loss_attack == "apgd-ce":
        run = apgd_ce(
            model,
            x,
            y,
            eps=cfg.eps,
            norm=cfg.norm,
            steps=apgd_steps,
            seed=cfg.seed,
            stream=stream,
            index_offset=start,
            lo=cfg.lo,
            hi=cfg.hi,
        )
        return run.x_loss, run.loss, run.broken
    res = pgd_attack(model, x, y, cfg.with_(attack=loss_attack), start=start, stream=stream)
    return res.x_loss, res.loss, ~res.correct


@no_tf32()
def run_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ScanConfig,
    device: torch.device | str = "cpu",
    *,
    attack: str | None = None,
    loss_attack: str | None = None,
    stream: int = 0,
    index_offset: int = 0,
    progress: Progress | None = None,
    budget: AutoAttackSettings | None = None,
) -> AttackOutcome:
    """Attack a split batch by batch: robust accuracy from ``attack``, the robust-loss
    points from ``loss_attack``.

    Args:
        model: classifier in eval mode, on ``device``.
        x, y: the split (or a shard of it), on any device; results come back on the CPU.
        cfg: eps, norm, lo/hi, seed, dtype, batch_size; steps/restarts/alpha for PGD.
        attack: one of :data:`ATTACKS` (default ``cfg.attack``).
        loss_attack: ``pgd``, ``fgsm`` or ``apgd-ce`` (default: ``attack`` for PGD/FGSM,
            else ``apgd-ce``).
        stream: 0 for the train split, 1 for test (different starts).
        index_offset: global index of x[0] (a shard's first example under torchrun).
        progress: called with the number of examples done after each batch.
        budget: the APGD / APGD-T / FAB-T / Square budgets (default: the standard
            AutoAttack's, :class:`AutoAttackSettings`).

    Raises:
        ConfigError: an unknown attack name.
    """
    cfg = cfg.with_default_threat_model()  # unset: the defaults (no checkpoint here)
    attack = cfg.attack.value if attack is None else str(attack)
    loss_attack = _default_loss_attack(attack) if loss_attack is None else str(loss_attack)
    _check_names(attack, loss_attack)
    budget = budget or AutoAttackSettings()
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    device = torch.device(device)
    n = x.shape[0]
    x_loss = torch.empty_like(x, dtype=dtype)
    x_adv = torch.empty_like(x, dtype=dtype)
    loss = torch.empty(n, dtype=dtype)
    code = torch.empty(n, dtype=torch.long)
    loss_correct = torch.empty(n, dtype=torch.bool)
    skipped = skipped_stages(attack, tuple(x.shape), cfg.norm.value)
    stages = _stages(attack, skipped)
    for i in range(0, n, cfg.batch_size):
        xb = x[i : i + cfg.batch_size].to(device, dtype)
        yb = y[i : i + cfg.batch_size].to(device)
        part = _attack_batch(
            model, xb, yb, cfg, attack, loss_attack, index_offset + i, stream, budget, stages[1:]
        )
        j = i + xb.shape[0]
        x_loss[i:j], x_adv[i:j] = part["x_loss"].cpu(), part["x_adv"].cpu()
        loss[i:j], code[i:j] = part["loss"].cpu(), part["broken_code"].cpu()
        loss_correct[i:j] = part["loss_correct"].cpu()
        if progress is not None:
            progress(xb.shape[0])
    return AttackOutcome(
        x_loss=x_loss,
        loss=loss,
        correct=code < 0,
        loss_correct=loss_correct,
        broken_code=code,
        x_adv=x_adv,
        attack=attack,
        loss_attack=loss_attack,
        stages=stages,
        skipped=skipped,
    )
