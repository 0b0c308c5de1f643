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

__all__ = [
    "WciError",
    "sensitivities",
    "wci_error",
    "attack_variance",
    "tail_factor",
    "attack_tail_factor",
    "t_quantile",
]

#: the two-sided coverage a 2-SE interval has under a normal law (the gate's rule)
_TWO_SE = 0.9772498680518208


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


def t_quantile(p: float, dof: float) -> float:
    """Student's t quantile by the Cornish-Fisher expansion in 1 / dof (Abramowitz and
    Stegun 26.7.5), within 0.5 % from 3 degrees of freedom on, for p near 0.977.

    Example:
        >>> round(t_quantile(0.9772498680518208, 15), 3), round(t_quantile(0.975, 1e9), 3)
        (2.181, 1.96)
    """
    z = _normal_quantile(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / dof + g2 / dof**2 + g3 / dof**3 + g4 / dof**4


def _normal_quantile(p: float) -> float:
    lo, hi = -10.0, 10.0
    for _ in range(80):  # bisection on the normal cdf: plain and exact to 1e-15
        mid = 0.5 * (lo + hi)
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def tail_factor(resid: Sequence[float], centred: bool = True) -> float:
    """How much a spread over G groups must grow so that 2 of it covers as 2 SE should.

    A variance estimated from G group residuals r_g has, with excess kurtosis k of the
    r_g, relative variance 2 / (G - 1) + k / G (normal: k = 0), i.e. the degrees of
    freedom of a chi-square with that spread, nu = 2 / (2 / (G - 1) + k / G)
    (Satterthwaite's matching of the second moment). Heavy-tailed per-example traces
    give k of 5-30 and nu far below G - 1: the SE is then noisy and, a mean and its
    spread both being driven by the few large examples drawn, low when the estimate
    is low. The factor t_nu(0.977) / 2 makes the 2-SE interval a t interval on nu
    degrees of freedom; 1 for a normal spread over many groups. ``centred``: the
    r_g are residuals about a fitted mean (G - 1 degrees of freedom), else paired
    differences about 0 (G). nu is held at >= 3, where the expansion holds.

    Example:
        >>> round(tail_factor([1.0, -1.0] * 50), 3), round(tail_factor([5.0] + [-0.05] * 99), 2)
        (1.013, 1.65)
    """
    groups = len(resid)
    s2 = math.fsum(r * r for r in resid)
    if groups < 4 or s2 <= 0:
        return 1.0
    kurt = groups * math.fsum(r**4 for r in resid) / s2**2 - 3.0
    base = groups - 1 if centred else groups
    dof = max(2.0 / (2.0 / base + max(kurt, 0.0) / groups), 3.0)
    return max(t_quantile(_TWO_SE, dof) / 2.0, 1.0)


def attack_tail_factor(
    a: Sequence[float],
    shares: Sequence[Sequence[float]],
    shares_again: Sequence[Sequence[float]],
) -> float:
    """:func:`tail_factor` of the paired group differences behind :func:`attack_variance`."""
    u = _shares(a, shares)
    v = _shares(a, shares_again)
    return tail_factor([x - y for x, y in zip(u, v, strict=True)], centred=False)


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
    attack_tail: float = 1.0,
    tails: bool = True,
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
        attack_tail: :func:`tail_factor` of the paired differences behind
            ``attack_var`` (:func:`attack_tail_factor`).
        tails: widen the subset part by :func:`tail_factor` of the group residuals.

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
        resid = [u_g - m / n * total for u_g, m in zip(u, group_sizes, strict=True)]
        b = groups / (groups - 1) * math.fsum(r * r for r in resid)
        # the group spread B also holds the probes' and the starts' variance (both
        # drawn per group or per example): Cochran's second stage, so they are taken
        # out of B here and added back whole below, (1 - f) B + f (W + A) in all
        sample_var = max((1 - f) * (b - w - (attack_var or 0.0)), 0.0)
        sample_var *= tail_factor(resid) ** 2 if tails else 1.0
        covers.append("hessian-subset")
    attack = 0.0 if attack_var is None else attack_var * attack_tail**2
    if attack_var is not None:
        covers.append("attack-starts")
    return WciError(
        se=math.sqrt(w + sample_var + attack),
        probe_se=math.sqrt(w),
        sample_se=math.sqrt(sample_var),
        attack_se=math.sqrt(attack),
        covers=tuple(covers),
    )
