"""The scan's curvature stage: Hessian subset -> per-layer traces, each with an SE.

The traces are measured on a seeded stratified subset of the adversarial train examples.
Their SEs cover the probes and the subset's draw (:mod:`wciaudit.curvature`); with
``attack_spread`` on, the subset is attacked again from other random starts and the
traces measured again with the same groups and probes, so the pair also measures how
much the traces move with the attack's starts (:mod:`wciaudit.uncertainty`). WCI and
its SE are the bound stage's (:mod:`wciaudit.pipeline.bound`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .. import bounds
from ..attacks import run_attack
from ..config import Attack, CurvatureMethod, ScanConfig
from ..curvature import Objective, TraceEstimate, layer_traces
from ..data import Splits, stratified_subset
from ..errors import ConfigError
from ..metrics import per_example
from ..result import LayerResult
from ..uncertainty import attack_variance
from .attack import split_of
from .run import ScanRun

__all__ = [
    "Curvature",
    "Subset",
    "fill_layer",
    "hessian_subset",
    "measure_curvature",
    "paired",
]

#: the attack stream of the second attack on the Hessian subset (0: train, 1: test)
_SPREAD_STREAM = 2


@dataclass(frozen=True)
class Subset:
    """The examples the Hessian is taken over: this process's rows (adversarial ``x``,
    clean ``x_clean``), the subset's size ``n`` over all processes, and the size of the
    split it was drawn from."""

    x: torch.Tensor
    x_clean: torch.Tensor
    y: torch.Tensor
    n: int
    n_population: int
    offset: int


@dataclass(frozen=True)
class Curvature:
    """What the curvature stage measured: the subset, the Hessian loss on it, each
    layer's trace (``layers``: the inventory's layers with their traces, SEs and flags
    filled in; ``estimates``: the estimators' own records) and, with the attack-spread
    re-attack, the second run's estimates (``again``)."""

    subset: Subset
    hessian_loss: float
    layers: list[LayerResult]
    estimates: list[TraceEstimate]
    again: list[TraceEstimate] | None


def measure_curvature(
    run: ScanRun,
    net: nn.Module,
    subset: Subset,
    loss_attack: str,
    layers: list[LayerResult],
) -> Curvature:
    """The Hessian loss on the subset and every layer's trace there with an SE
    (``loss_attack``: the attack whose points the subset holds, attacked again with
    other starts for the attack-start part of the SEs)."""
    hessian_loss = _hessian_loss(run, net, subset)
    if not layers:
        return Curvature(subset, hessian_loss, [], [], None)
    names = [f"model.{layer.name}" for layer in layers]
    norms = [layer.frob_norm for layer in layers]
    with run.part("traces"):
        estimates = _curvature(run, net, names, norms, subset.x, subset)
    again = None
    why_not = _spread_why_not(run.config, loss_attack)
    if why_not is None:
        with run.part("attack_spread"):
            x_again = _attack_again(run, net, subset, loss_attack)
        with run.part("spread_remeasure"):
            again = _curvature(run, net, names, norms, x_again, subset)
    filled = [copy.deepcopy(layer) for layer in layers]
    for layer, est, est2 in zip(filled, estimates, again or estimates, strict=True):
        fill_layer(
            layer,
            est,
            est2 if again is not None else None,
            subset.n / subset.n_population,
            max_probes=run.config.max_probes,
        )
    if why_not is not None:
        run.notes.append(f"SEs do not include the attack's random starts: {why_not}")
    return Curvature(subset, hessian_loss, filled, estimates, again)


def _spread_why_not(config: ScanConfig, loss_attack: str) -> str | None:
    """Why the traces are not measured again at a second attack's points (None: they
    are): the re-attack is off, the attack has no random start, or the route's
    estimates carry no group shares to pair the two measurements by (Hutch++)."""
    if not config.attack_spread:
        return "off (--no-attack-spread)"
    if not config.eps or loss_attack == "fgsm" or config.attack is Attack.fgsm:
        return f"{loss_attack} has no random start"
    if config.curvature is CurvatureMethod.hutchpp:
        return "Hutch++ estimates have no group shares to pair a second attack's with"
    return None


def hessian_subset(run: ScanRun, splits: Splits, adv: dict[str, torch.Tensor]) -> Subset:
    """A stratified subset of the adversarial train examples (test without a train split)."""
    config, shard = run.config, run.shard
    split = "train" if "train" in adv else "test"
    if split == "test":
        run.notes.append(
            "no train split: curvature is measured on the test split, the gap and the bound are null"
        )
    x_split, y_full = split_of(splits, split)
    n_population = int(y_full.shape[0])
    idx = torch.arange(n_population)
    if n_population > config.hessian_samples:
        idx = stratified_subset(y_full, config.hessian_samples, config.seed)
    if idx.shape[0] < shard.world:
        raise ConfigError(
            f"the Hessian subset has {idx.shape[0]} examples (hessian_samples), fewer than "
            f"the {shard.world} processes"
        )
    # the subset's rows that this process attacked, gathered so that every process
    # holds the subset in index order, then sharded again for the products
    lo, hi = shard.bounds(n_population)
    mine = idx[(idx >= lo) & (idx < hi)] - lo
    x_all = shard.gather_cat(adv[split][mine])
    h_lo, h_hi = shard.bounds(idx.shape[0])
    rows = idx[h_lo:h_hi]
    return Subset(
        x_all[h_lo:h_hi], x_split[rows], y_full[rows], int(idx.shape[0]), n_population, h_lo
    )


def _hessian_loss(run: ScanRun, net: nn.Module, subset: Subset) -> float:
    losses = run.batches.run(partial(_losses, net=net, x=subset.x, y=subset.y, device=run.device))
    return float(run.shard.all_reduce_sum(losses.sum().reshape(1))[0]) / subset.n


def _losses(
    batch_size: int, *, net: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> torch.Tensor:
    return per_example(net, x, y, batch_size, device)[0]


def _attack_again(run: ScanRun, net: nn.Module, subset: Subset, loss_attack: str) -> torch.Tensor:
    """The subset's points from the loss-maximising attack with other random starts."""
    progress = run.ticker("attack-spread", subset.x_clean.shape[0])

    def job(batch_size: int) -> torch.Tensor:
        cfg = run.config.with_(batch_size=batch_size)
        outcome = run_attack(
            net,
            subset.x_clean,
            subset.y,
            cfg,
            run.device,
            attack=loss_attack,
            loss_attack=loss_attack,
            stream=_SPREAD_STREAM,
            index_offset=subset.offset,
            progress=progress,
        )
        return outcome.x_loss

    return run.batches.run(job)


def _traces(
    batch_size: int,
    *,
    net: nn.Module,
    names: list[str],
    norms: list[float],
    x: torch.Tensor,
    subset: Subset,
    run: ScanRun,
) -> list[TraceEstimate]:
    shard = run.shard
    objective = Objective(
        net,
        x,
        subset.y,
        names,
        batch_size,
        run.device,
        n_total=subset.n,
        n_population=subset.n_population,
        offset=subset.offset,
        **({"reduce": shard.all_reduce_sum} if shard.active else {}),
    )
    return layer_traces(
        objective,
        run.config,
        weight_norms=norms,
        progress=run.ticker("curvature", None),
    )


def _curvature(
    run: ScanRun,
    net: nn.Module,
    names: list[str],
    norms: list[float],
    x: torch.Tensor,
    subset: Subset,
) -> list[TraceEstimate]:
    """Per-layer Hessian traces at the points ``x`` of the subset, probes spent where
    they cut WCI's variance most (``norms``: the layers' Frobenius norms)."""
    job = partial(_traces, net=net, names=names, norms=norms, x=x, subset=subset, run=run)
    # under torchrun a retry on one process would desynchronise the all-reduces
    return run.batches.run(job, retry=not run.shard.active)


def paired(est: TraceEstimate, again: TraceEstimate | None) -> bool:
    return (
        again is not None
        and len(est.group_shares) > 0
        and len(est.group_shares) == len(again.group_shares)
    )


def fill_layer(
    layer: LayerResult,
    est: TraceEstimate,
    again: TraceEstimate | None,
    subset_fraction: float | None = None,
    *,
    max_probes: int | None = None,
) -> None:
    """Copy one layer's estimate into the result, with the attack-start part of its SE
    from the paired second run (``again``), and flag what the reader must know.
    ``subset_fraction`` is f = n / N (None: the subset is the whole split, f = 1);
    ``max_probes`` the probe cap, named in the flag of a layer that did not converge."""
    attack_var = (
        attack_variance([1.0], [est.group_shares], [again.group_shares])
        if paired(est, again)
        else None
    )
    # the estimator's SE is (1 - f) B + f W; the starts are a second-stage source, so
    # they add f A, and the subset part loses the (1 - f) A its group spread held
    f = 1.0 if subset_fraction is None else subset_fraction
    attack = attack_var or 0.0
    se = math.sqrt(est.se**2 + f * attack)
    sample_se = math.sqrt(max(est.sample_se**2 - (1 - f) * attack, 0.0))
    layer.trace, layer.trace_se, layer.probes = est.trace, se, est.probes
    layer.method, layer.converged, layer.stop_reason = est.method, est.converged, est.stop_reason
    layer.history, layer.route_reason = est.history, est.route_reason or None
    layer.probe_se, layer.sample_se = est.probe_se, sample_se
    layer.attack_se = None if attack_var is None else math.sqrt(attack_var)
    layer.se_covers = list(est.se_covers) + (["attack-starts"] if attack_var is not None else [])
    rel = se / abs(est.trace) if est.trace else None
    layer.rel_se = rel if rel is not None and math.isfinite(rel) else None
    layer.wci_term = bounds.wci_terms([layer.frob_norm], [est.trace])[0]
    layer.wci_term_se = bounds.wci_term_se(layer.frob_norm, est.trace, se)
    flags = []
    if est.trace <= 0:
        flags.append("non-positive trace: contributes 0 to WCI")
    elif se > 0 and est.trace < 2 * se:
        flags.append("trace within 2 SE of 0")
    if est.stop_reason == "subset":
        flags.append("not converged: the Hessian subset's part of the SE alone is above tol")
    elif not est.converged:
        flags.append(f"not converged: {_stop_words(est, max_probes)}")
    layer.flag = "; ".join(flags) or None


def _stop_words(est: TraceEstimate, max_probes: int | None) -> str:
    """Why a layer is not converged. The scan's tolerance is on WCI (each layer is
    marked by whether WCI met it), and probes go where they cut WCI's SE most, so a
    layer may stop well below the cap: say how many it had, and the cap."""
    unit = "sampled labels per example" if est.method == "mc-ggn" else "probes"
    if est.probes == 1:
        unit = unit.replace("labels", "label").replace("probes", "probe")
    if isinstance(est.probes, int) and max_probes is not None and est.probes >= max_probes:
        return f"WCI's relative SE above tol with this layer at the cap of {max_probes} {unit}"
    cap = f", cap {max_probes}" if max_probes is not None else ""
    return f"WCI's relative SE above tol when probing stopped ({est.probes} {unit} here{cap})"
