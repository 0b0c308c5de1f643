"""The scan's curvature stage: Hessian subset -> per-layer traces -> WCI with an honest SE.

The traces are measured on a seeded stratified subset of the adversarial train examples.
Their SEs cover the probes and the subset's draw (:mod:`wciaudit.curvature`); with
``attack_spread`` on, the subset is attacked again from other random starts and the
traces measured again with the same groups and probes, so the pair also measures how
much the traces move with the attack's starts (:mod:`wciaudit.uncertainty`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import bounds
from .attacks import run_attack
from .config import Attack
from .curvature import Objective, TraceEstimate, layer_traces
from .curvature.groups import common_groups, fold_shares
from .data import Splits, stratified_subset
from .errors import ConfigError
from .metrics import per_example
from .result import AuditResult, LayerResult
from .uncertainty import attack_tail_factor, attack_variance, sensitivities, wci_error

if TYPE_CHECKING:
    from .scan import _Run

__all__ = ["measure_curvature"]

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


def measure_curvature(
    run: _Run,
    net: nn.Module,
    splits: Splits,
    adv: dict[str, torch.Tensor],
    result: AuditResult,
    loss_attack: str,
) -> None:
    """Fill the layers' traces and SEs, the Hessian loss, WCI and its SE in ``result``."""
    subset = hessian_subset(run, splits, adv)
    result.dataset.hessian_samples = subset.n
    result.metrics.hessian_loss = _hessian_loss(run, net, subset)
    if not result.layers:
        return
    names = [f"model.{layer.name}" for layer in result.layers]
    norms = [layer.frob_norm for layer in result.layers]
    with run.part("traces"):
        estimates = _curvature(run, net, names, norms, subset.x, subset)
    again = None
    if run.cfg.attack_spread and _random_starts(run.cfg, loss_attack):
        with run.part("attack_spread"):
            x_again = _attack_again(run, net, subset, loss_attack)
        with run.part("spread_remeasure"):
            again = _curvature(run, net, names, norms, x_again, subset)
    for layer, est, est2 in zip(result.layers, estimates, again or estimates, strict=True):
        fill_layer(
            layer,
            est,
            est2 if again is not None else None,
            subset.n / subset.n_population,
            max_probes=run.cfg.max_probes,
        )
    _wci(result, estimates, again, subset, run)
    result.wci_target = wci_target(result, estimates, run.cfg.tol, run.cfg.max_probes)
    if again is None:
        why = (
            "off (--no-attack-spread)"
            if not run.cfg.attack_spread
            else f"{loss_attack} has no random start"
        )
        run.notes.append(f"SEs do not include the attack's random starts: {why}")


def _random_starts(cfg: Any, loss_attack: str) -> bool:
    return cfg.eps > 0 and not (loss_attack == "fgsm" or cfg.attack is Attack.fgsm)


def hessian_subset(run: _Run, splits: Splits, adv: dict[str, torch.Tensor]) -> Subset:
    """A stratified subset of the adversarial train examples (test without a train split)."""
    cfg, shard = run.cfg, run.shard
    split = "train" if "train" in adv else "test"
    if split == "test":
        run.notes.append(
            "no train split: curvature is measured on the test split, the gap and the bound are null"
        )
    x_split, y_full = (
        (splits.x_train, splits.y_train) if split == "train" else (splits.x_test, splits.y_test)
    )
    n_population = int(y_full.shape[0])
    idx = torch.arange(n_population)
    if n_population > cfg.hessian_samples:
        idx = stratified_subset(y_full, cfg.hessian_samples, cfg.seed)
    if idx.shape[0] < shard.world:
        raise ConfigError(
            f"--hessian-samples {idx.shape[0]} is smaller than the {shard.world} processes"
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


def _hessian_loss(run: _Run, net: nn.Module, subset: Subset) -> float:
    losses = run.batches.run(partial(_losses, net=net, x=subset.x, y=subset.y, device=run.device))
    return float(run.shard.all_reduce_sum(losses.sum().reshape(1))[0]) / subset.n


def _losses(
    batch_size: int, *, net: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> torch.Tensor:
    return per_example(net, x, y, batch_size, device)[0]


def _attack_again(run: _Run, net: nn.Module, subset: Subset, loss_attack: str) -> torch.Tensor:
    """The subset's points from the loss-maximising attack with other random starts."""
    progress = run.ticker("attack-spread", subset.x_clean.shape[0])

    def job(batch_size: int) -> torch.Tensor:
        cfg = run.cfg.with_(batch_size=batch_size)
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
    run: _Run,
) -> list[TraceEstimate]:
    cfg, shard = run.cfg, run.shard
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
        cfg,
        weight_norms=norms,
        progress=run.ticker("curvature", None),
    )


def _curvature(
    run: _Run,
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


def _paired(est: TraceEstimate, again: TraceEstimate | None) -> bool:
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
        if _paired(est, again)
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


def _wci(
    result: AuditResult,
    estimates: list[TraceEstimate],
    again: list[TraceEstimate] | None,
    subset: Subset,
    run: _Run,
) -> None:
    """WCI and its SE over every source the scan varies (:mod:`wciaudit.uncertainty`)."""
    frob = [la.frob_norm for la in result.layers]
    traces = [e.trace for e in estimates]
    result.wci = math.fsum(bounds.wci_terms(frob, traces))
    groups, assignment = common_groups(
        {len(e.group_shares) for e in estimates}, subset.n, run.cfg.seed
    )
    if assignment is None:
        # an estimate without group shares: per-layer SEs in quadrature (independent)
        result.wci_se = bounds.weight_curvature_index(
            frob, traces, [la.trace_se for la in result.layers]
        )[1]
        result.wci_se_method = "delta method from per-layer standard errors (layers independent)"
        result.se_covers["wci"] = sorted({c for la in result.layers for c in la.se_covers})
        return
    shares = [fold_shares(e.group_shares, groups) for e in estimates]
    sizes = torch.bincount(assignment, minlength=groups).tolist()
    ses = [la.trace_se for la in result.layers]
    attack_var, attack_tail = None, 1.0
    if again is not None and all(_paired(e, e2) for e, e2 in zip(estimates, again, strict=True)):
        slopes = sensitivities(frob, traces, ses)
        shares_again = [fold_shares(e.group_shares, groups) for e in again]
        attack_var = attack_variance(slopes, shares, shares_again)
        attack_tail = attack_tail_factor(slopes, shares, shares_again)
    err = wci_error(
        frob,
        traces,
        [e.probe_se for e in estimates],
        shares,
        sizes,
        subset.n_population,
        attack_var=attack_var,
        trace_ses=ses,
        attack_tail=attack_tail,
    )
    result.wci_se = err.se
    parts = {
        "probes": "probes (independent per layer)",
        "sampled-labels": "sampled labels (independent per layer)",
        "hessian-subset": "Hessian subset (two-stage, finite-population factor)",
        "attack-starts": "attack starts (paired second attack)",
    }
    # the sources this SE covers, and only those (the report quotes this beside them)
    result.wci_se_method = "delta method on group shares: " + (
        ", ".join(parts.get(c, c) for c in err.covers) or "no source varies"
    )
    result.se_covers["wci"] = list(err.covers)
    result.wci_se_parts = {
        "probes": err.probe_se,
        "hessian-subset": err.sample_se,
        "attack-starts": err.attack_se,
    }


#: what only more Hessian samples reduce (the words of :func:`wci_target`)
_SUBSET_WORDS = (
    "the Hessian subset and the attack's random starts, which only more --hessian-samples reduce"
)


def wci_target(
    result: AuditResult, estimates: list[TraceEstimate], tol: float, max_probes: int
) -> dict[str, Any] | None:
    """What the WCI precision target ``tol`` did: met or missed, and why.

    ``met`` compares the reported relative SE, wci_se / wci, with ``tol``. Probes and
    sampled labels are the only part the target can act on: where every layer is exact
    there is nothing to act on, and where the probes' part is within ``tol`` the rest
    is the Hessian subset and the attack's starts.
    """
    if result.wci is None or result.wci_se is None:
        return None
    rel = result.wci_se / result.wci if result.wci > 0 else math.inf
    met = rel <= tol
    noisy = [e for e in estimates if e.stop_reason != "exact"]
    probe_part = result.wci_se_parts.get("probes")
    if not noisy:
        reason = f"nothing to act on: every layer is exact, the SE is {_SUBSET_WORDS}"
    elif met:
        reason = "met"
    elif probe_part is not None and probe_part <= tol * result.wci:
        reason = f"the probes' part is within tol, the rest is {_SUBSET_WORDS}"
    elif any(isinstance(e.probes, int) and e.probes >= max_probes for e in noisy):
        reason = f"at the probe cap (--max-probes {max_probes})"
    else:
        reason = "the rounds stopped where more probes could not reach tol"
    return {
        "tol": tol,
        "met": met,
        "relative_se": rel if math.isfinite(rel) else None,
        "reason": reason,
    }
