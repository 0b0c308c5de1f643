"""The scan's bound stage: WCI with its standard error, what the precision target did,
and the PAC-Bayes terms (SPEC: Weight-Curvature Index, PAC-Bayes bound).

WCI = sum_k ||W_k||_F sqrt(max(Tr_k, 0)); its SE is the delta method on the layers'
group shares over every source the scan varies (:func:`wciaudit.uncertainty.wci_error`):
the probes, the Hessian subset's draw and, with the attack-spread re-attack, the
attack's random starts. :func:`wci_figures` is also the monitor's
(:class:`wciaudit.monitor.WCIMonitor`), with the batch as a sample (f = 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from .. import bounds
from ..config import ScanConfig
from ..curvature import TraceEstimate
from ..curvature.groups import common_groups, fold_shares
from ..result import LayerResult, Metrics, PacBayes
from ..uncertainty import attack_tail_factor, attack_variance, sensitivities, wci_error
from .measure import Curvature, paired

__all__ = ["Bound", "WCIFigures", "bound_stage", "pac_bayes", "wci_figures", "wci_target"]

#: the words of each source of WCI's SE, as the report quotes them
_SOURCES = {
    "probes": "probes (independent per layer)",
    "sampled-labels": "sampled labels (independent per layer)",
    "hessian-subset": "Hessian subset (two-stage, finite-population factor)",
    "attack-starts": "attack starts (paired second attack)",
}


@dataclass(frozen=True)
class WCIFigures:
    """WCI, its SE, how the SE was computed (``method``, in words), the sources it
    covers and its parts by source (in quadrature)."""

    wci: float
    se: float
    method: str
    covers: list[str]
    parts: dict[str, float] = field(default_factory=dict)


def wci_figures(
    frobs: Sequence[float],
    estimates: Sequence[TraceEstimate],
    trace_ses: Sequence[float],
    *,
    n: int,
    n_population: float,
    seed: int,
    again: Sequence[TraceEstimate] | None = None,
    layer_covers: Sequence[str] = (),
) -> WCIFigures:
    """WCI of the layers' traces and its SE over every source the estimates vary.

    Args:
        frobs: ||W_k||_F per layer; ``estimates`` the traces in the same order.
        trace_ses: each trace's full SE (the attack-start part included, if any).
        n, n_population, seed: the Hessian subset's size, the size of the split it was
            drawn from (``math.inf``: a sample of a far larger population, f = 0), and
            the seed its groups were drawn with.
        again: the estimates of the paired second attack, for the attack-start part.
        layer_covers: the layers' SE sources, quoted where the estimates carry no group
            shares and the SE is the per-layer SEs in quadrature.
    """
    traces = [e.trace for e in estimates]
    wci = math.fsum(bounds.wci_terms(frobs, traces))
    groups, assignment = common_groups({len(e.group_shares) for e in estimates}, n, seed)
    if assignment is None:
        # an estimate without group shares: per-layer SEs in quadrature (independent)
        se = bounds.weight_curvature_index(frobs, traces, trace_ses)[1]
        method = "delta method from per-layer standard errors (layers independent)"
        return WCIFigures(wci, se, method, sorted(set(layer_covers)))
    shares = [fold_shares(e.group_shares, groups) for e in estimates]
    sizes = torch.bincount(assignment, minlength=groups).tolist()
    attack_var, attack_tail = None, 1.0
    if again is not None and all(paired(e, e2) for e, e2 in zip(estimates, again, strict=True)):
        slopes = sensitivities(frobs, traces, trace_ses)
        shares_again = [fold_shares(e.group_shares, groups) for e in again]
        attack_var = attack_variance(slopes, shares, shares_again)
        attack_tail = attack_tail_factor(slopes, shares, shares_again)
    err = wci_error(
        frobs,
        traces,
        [e.probe_se for e in estimates],
        shares,
        sizes,
        n_population,
        attack_var=attack_var,
        trace_ses=trace_ses,
        attack_tail=attack_tail,
    )
    # the sources this SE covers, and only those (the report quotes this beside them)
    method = "delta method on group shares: " + (
        ", ".join(_SOURCES.get(c, c) for c in err.covers) or "no source varies"
    )
    parts = {
        "probes": err.probe_se,
        "hessian-subset": err.sample_se,
        "attack-starts": err.attack_se,
    }
    return WCIFigures(wci, err.se, method, list(err.covers), parts)


#: what only more Hessian samples reduce (the words of :func:`wci_target`)
_SUBSET_WORDS = (
    "the Hessian subset and the attack's random starts, which only more --hessian-samples reduce"
)


def wci_target(
    figures: WCIFigures, estimates: list[TraceEstimate], tol: float, max_probes: int
) -> dict[str, Any]:
    """What the WCI precision target ``tol`` did: met or missed, and why.

    ``met`` compares the reported relative SE, wci_se / wci, with ``tol``. Probes and
    sampled labels are the only part the target can act on: where every layer is exact
    there is nothing to act on, and where the probes' part is within ``tol`` the rest
    is the Hessian subset and the attack's starts.
    """
    rel = figures.se / figures.wci if figures.wci > 0 else math.inf
    met = rel <= tol
    noisy = [e for e in estimates if e.stop_reason != "exact"]
    probe_part = figures.parts.get("probes")
    if not noisy:
        reason = f"nothing to act on: every layer is exact, the SE is {_SUBSET_WORDS}"
    elif met:
        reason = "met"
    elif probe_part is not None and probe_part <= tol * figures.wci:
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


def pac_bayes(
    wci: float,
    robust_loss_train: float | None,
    n_train: int | None,
    delta: float,
    classes: int | None,
) -> tuple[PacBayes, str | None]:
    """The PAC-Bayes terms where there is a robust train loss (else only ``delta``),
    flagged vacuous when the bound is above ln C, the cross-entropy of a uniform guess;
    and the note that says so (None when it is not vacuous)."""
    if robust_loss_train is None or n_train is None:
        return PacBayes(delta=delta), None
    terms = bounds.pac_bayes_terms(robust_loss_train, wci, n_train, delta)
    out = PacBayes(**{f.name: getattr(terms, f.name) for f in fields(bounds.PacBayesTerms)})
    if not (classes and classes > 1 and out.bound is not None):
        return out, None
    out.uniform_loss = math.log(classes)
    out.vacuous = out.bound > out.uniform_loss
    if not out.vacuous:
        return out, None
    return out, (
        f"the PAC-Bayes bound {out.bound:.3g} is vacuous: above "
        f"ln {classes} = {out.uniform_loss:.3g}, the loss of a uniform guess"
    )


@dataclass(frozen=True)
class Bound:
    """What the bound stage gives: WCI with its SE, the precision target's outcome, and
    the PAC-Bayes terms."""

    wci: WCIFigures
    target: dict[str, Any]
    pac_bayes: PacBayes


def bound_stage(
    curvature: Curvature,
    metrics: Metrics,
    *,
    config: ScanConfig,
    n_train: int | None,
    classes: int | None,
    notes: list[str],
) -> Bound | None:
    """WCI over the measured layers, the target's outcome and the PAC-Bayes terms (None
    where no layer was measured)."""
    layers: list[LayerResult] = curvature.layers
    if not layers:
        return None
    subset = curvature.subset
    figures = wci_figures(
        [la.frob_norm for la in layers],
        curvature.estimates,
        [la.trace_se for la in layers],
        n=subset.n,
        n_population=subset.n_population,
        seed=config.seed,
        again=curvature.again,
        layer_covers=[c for la in layers for c in la.se_covers],
    )
    target = wci_target(figures, curvature.estimates, config.tol, config.max_probes)
    terms, note = pac_bayes(figures.wci, metrics.robust_loss_train, n_train, config.delta, classes)
    if note:
        notes.append(note)
    return Bound(figures, target, terms)
