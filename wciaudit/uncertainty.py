"""Standard errors of WCI that cover what the scan itself makes vary (SPEC: What an SE covers).

Three sources move a scan's WCI from one seed to the next:

- ``probes``: Hutchinson's random probes (independent from layer to layer);
- ``hessian-subset``: which n of the split's N examples the Hessian is taken over, with
  the finite-population factor 1 - n/N;
- ``attack-starts``: the attack's random starts, which move the adversarial points.

Every layer estimate carries its *group shares*: the trace split over the G random
groups of the Hessian subset (:mod:`wciaudit.curvature.groups`), summing to the trace.
WCI is linearised around the estimates, WCI ~ sum_k a_k T_k with
a_k = ||W_k||_F / (2 sqrt(T_k)) (0 for T_k <= 0), so each group has a WCI share
u_g = sum_k a_k s_kg. The subset part then follows Cochran's two-stage estimator on
the u_g, which keeps the correlation between layers that share the examples (per-layer
SEs added in quadrature would drop it). The attack part pairs two runs on the same
examples and probes that differ only in the attack's starts: the starts are drawn per
example, so the G group differences are independent and
Var_attack = sum_g (u_g - u'_g)^2 / 2. Like the probes, the starts are a second-stage
source (drawn per example), so the total is (1 - f) B + f (W + A) with B the group
spread, W the probe and A the attack variance (Cochran 1977, 10.8).

Everything here is plain arithmetic on floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from . import bounds

__all__ = ["WciError", "sensitivities", "wci_error", "attack_variance"]


@dataclass(frozen=True)
class WciError:
    """The SE of WCI and its parts (se^2 = probe^2 + sample^2 + attack^2)."""

    se: float
    probe_se: float
    sample_se: float
    attack_se: float
    covers: tuple[str, ...]


def sensitivities(
    frob_norms: Sequence[float],
    traces: Sequence[float],
    trace_ses: Sequence[float] | None = None,
) -> list[float]:
    """a_k = dWCI/dT_k = ||W_k||_F / (2 sqrt(T_k)), 0 where T_k <= 0 (the term is 0).

    With the traces' SEs, a trace within a few SE of 0 (or below it) gets the slope
    that gives its term the spread it has under a normal estimate
    (:func:`wciaudit.bounds.term_slope`), where the delta method gives too little.
    """
    ses = [0.0] * len(traces) if trace_ses is None else trace_ses
    return [bounds.term_slope(f, t, s) for f, t, s in zip(frob_norms, traces, ses, strict=True)]


def _shares(a: Sequence[float], group_shares: Sequence[Sequence[float]]) -> list[float]:
    groups = len(group_shares[0])
    return [
        math.fsum(a_k * s[g] for a_k, s in zip(a, group_shares, strict=True)) for g in range(groups)
    ]


def attack_variance(
    a: Sequence[float],
    shares: Sequence[Sequence[float]],
    shares_again: Sequence[Sequence[float]],
) -> float:
    """Var over the attack's starts of sum_k a_k T_k, from two paired runs.

    Args:
        a: weights a_k (``sensitivities`` for WCI; a one-hot vector for one layer).
        shares, shares_again: per layer, the group shares of the two runs (same groups).

    Example:
        >>> attack_variance([1.0], [[1.0, 2.0]], [[1.5, 2.0]])
        0.125
    """
    u = _shares(a, shares)
    v = _shares(a, shares_again)
    return math.fsum((x - y) ** 2 for x, y in zip(u, v, strict=True)) / 2.0


def wci_error(
    frob_norms: Sequence[float],
    traces: Sequence[float],
    probe_ses: Sequence[float],
    group_shares: Sequence[Sequence[float]],
    group_sizes: Sequence[int],
    n_population: float | None,
    *,
    attack_var: float | None = None,
    trace_ses: Sequence[float] | None = None,
) -> WciError:
    """SE of WCI from the layers' group shares (Cochran 1977, 10.8, ratio form).

    Args:
        frob_norms, traces: per layer.
        probe_ses: per layer, the probe part of the trace's SE (0 on exact routes).
        group_shares: per layer, the trace's share per group (G values each).
        group_sizes: examples per group; n = their sum.
        n_population: the split's size N (None: the subset is the whole split;
            ``math.inf``: a sample of a population far larger, f = 0, where the group
            spread alone is the variance and holds every per-example source).
        attack_var: Var_attack(WCI) from :func:`attack_variance`, or None when not
            measured.
        trace_ses: per layer, the trace's total SE, for the slopes of traces near 0
            (:func:`sensitivities`); None: the delta method's slopes.

    Returns:
        :class:`WciError`; ``covers`` lists the sources its SE includes.

    Example:
        >>> e = wci_error([2.0], [4.0], [0.0], [[1.0, 3.0]], [2, 2], None)
        >>> e.se, e.covers
        (0.0, ())
    """
    a = sensitivities(frob_norms, traces, trace_ses)
    n = sum(group_sizes)
    groups = len(group_sizes)
    w = math.fsum((a_k * s) ** 2 for a_k, s in zip(a, probe_ses, strict=True))
    covers: list[str] = ["probes"] if w > 0 else []
    sample_var = 0.0
    if n_population is not None and n < n_population and groups > 1:
        f = n / n_population
        u = _shares(a, group_shares)
        total = math.fsum(u)
        b = (
            groups
            / (groups - 1)
            * math.fsum((u_g - m / n * total) ** 2 for u_g, m in zip(u, group_sizes, strict=True))
        )
        # the group spread B also holds the probes' and the starts' variance (both
        # drawn per group or per example): Cochran's second stage, so they are taken
        # out of B here and added back whole below, (1 - f) B + f (W + A) in all
        sample_var = max((1 - f) * (b - w - (attack_var or 0.0)), 0.0)
        covers.append("hessian-subset")
    attack = 0.0 if attack_var is None else attack_var
    if attack_var is not None:
        covers.append("attack-starts")
    return WciError(
        se=math.sqrt(w + sample_var + attack),
        probe_se=math.sqrt(w),
        sample_se=math.sqrt(sample_var),
        attack_se=math.sqrt(attack),
        covers=tuple(covers),
    )
