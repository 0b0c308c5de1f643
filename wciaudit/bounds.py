"""Weight-Curvature Index and the PAC-Bayes bound terms (Xu & Zhang, arXiv 2410.07719).

Pure math on floats; no torch. SPEC sections: "Weight-Curvature Index" and
"PAC-Bayes bound terms".

    WCI = sum_k ||W_k||_F * sqrt(max(Tr(H_k), 0))

With posterior N(w, s_k^2 I) and prior N(0, s_k^2 I) per layer,
s_k^2 = c ||W_k||_F / sqrt(Tr(H_k)):

    curvature(c)  = (c / 2) WCI
    kl(c)         = WCI / (2 c)
    confidence    = ln(2 sqrt(m) / delta)
    bound(c)      = L_adv + (c / 2) WCI + sqrt((WCI / (2 c) + confidence) / (2 m))

bound is convex in c > 0; its minimiser solves 4 m WCI c^3 + 8 m confidence c^4 = 1
(set d bound / dc = 0), a quartic with one positive root, found by bisection.

Example:
    >>> wci, se = weight_curvature_index([2.0, 1.0], [4.0, 9.0], [0.4, 0.0])
    >>> wci, round(se, 6)
    (7.0, 0.2)
    >>> t = pac_bayes_terms(l_adv=0.5, wci=7.0, m=1000, delta=0.05)
    >>> abs(t.bound - pac_bayes_bound(t.c, 0.5, 7.0, 1000, 0.05)) < 1e-12
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def wci_terms(frob_norms: Sequence[float], traces: Sequence[float]) -> list[float]:
    """Per-layer ||W_k||_F * sqrt(max(Tr(H_k), 0)); a non-positive trace contributes 0."""
    return [f * math.sqrt(max(t, 0.0)) for f, t in zip(frob_norms, traces, strict=True)]


def weight_curvature_index(
    frob_norms: Sequence[float],
    traces: Sequence[float],
    trace_ses: Sequence[float],
) -> tuple[float, float]:
    """WCI and its standard error.

    The SE adds the per-layer term SEs (:func:`wci_term_se`) in quadrature, the layer
    estimates taken as independent: se(WCI) = sqrt(sum_k se(term_k)^2).

    Returns:
        (wci, wci_se)
    """
    terms = wci_terms(frob_norms, traces)
    var = math.fsum(
        wci_term_se(f, t, s) ** 2 for f, t, s in zip(frob_norms, traces, trace_ses, strict=True)
    )
    return math.fsum(terms), math.sqrt(var)


def wci_term_se(frob_norm: float, trace: float, trace_se: float) -> float:
    """SE of one layer's WCI term ||W||_F sqrt(max(Tr, 0)): :func:`term_slope` x se(Tr)."""
    return term_slope(frob_norm, trace, trace_se) * max(trace_se, 0.0)


#: at or above this many SEs above 0 a term's SE is the delta method's, below it the
#: spread under a normal trace estimate (the two differ by < 1 % from here on)
DELTA_Z = 10.0


def term_slope(frob_norm: float, trace: float, trace_se: float) -> float:
    """How a WCI term moves with its trace estimate, as its SE sees it.

    Far from 0 (Tr >= ``DELTA_Z`` se, or se = 0) it is the delta method's
    d term / d Tr = ||W||_F / (2 sqrt(Tr)), 0 for Tr <= 0. Nearer 0 the term
    sqrt(max(T, 0)) is not smooth and the delta method understates its spread (by 16 %
    at 3 SE, 34 % at 2 SE, and gives 0 at or below 0); there the slope is the one that
    gives the term the spread it has when the estimate T ~ N(Tr, se^2):
    sd(||W||_F sqrt(max(T, 0))) / se = ||W||_F sqrt(h(Tr / se) / se), with
    h(z) = Var(sqrt(max(z + Z, 0))), Z ~ N(0, 1) (:func:`sqrt_relu_variance`).
    A layer many SEs below 0 gets a slope near 0: its term is 0 whatever the probes.
    """
    if trace_se <= 0 or trace >= DELTA_Z * trace_se:
        return frob_norm / (2.0 * math.sqrt(trace)) if trace > 0 else 0.0
    return frob_norm * math.sqrt(sqrt_relu_variance(trace / trace_se) / trace_se)


def _normal_pdf(t: float) -> float:
    return math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


def sqrt_relu_variance(z: float, intervals: int = 400) -> float:
    """h(z) = Var(sqrt(max(z + Z, 0))) for Z ~ N(0, 1).

    E[max(z + Z, 0)] = z Phi(z) + phi(z) in closed form; E[sqrt(max(z + Z, 0))] =
    int_0^inf 2 s^2 phi(s^2 - z) ds (u = z + Z = s^2, a smooth integrand), by Simpson's
    rule up to s^2 - z = 9. h(0) = 0.2300, h(3) = 0.0963, h(z) ~ 1 / (4 z) for large z.

    Example:
        >>> round(sqrt_relu_variance(0.0), 4), round(sqrt_relu_variance(20.0) * 80, 3)
        (0.2299, 1.002)
    """
    if z <= -9.0:
        return 0.0
    big_phi = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    second = z * big_phi + _normal_pdf(z)
    top = math.sqrt(z + 9.0)
    step = top / intervals
    first = 0.0
    for i in range(intervals + 1):
        s = i * step
        weight = 1 if i in (0, intervals) else (4 if i % 2 else 2)
        first += weight * 2 * s * s * _normal_pdf(s * s - z)
    first *= step / 3
    return max(second - first * first, 0.0)


def confidence_term(m: int, delta: float) -> float:
    """ln(2 sqrt(m) / delta)."""
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    return math.log(2.0 * math.sqrt(m) / delta)


def pac_bayes_bound(c: float, l_adv: float, wci: float, m: int, delta: float) -> float:
    """bound(c) = L_adv + (c/2) WCI + sqrt((WCI/(2c) + ln(2 sqrt(m)/delta)) / (2m))."""
    if c <= 0:
        raise ValueError(f"c must be > 0, got {c}")
    conf = confidence_term(m, delta)
    return l_adv + 0.5 * c * wci + math.sqrt((wci / (2.0 * c) + conf) / (2.0 * m))


def optimal_c(wci: float, m: int, delta: float) -> float:
    """The c > 0 minimising bound(c): the positive root of 4 m WCI c^3 + 8 m conf c^4 = 1."""
    if wci < 0:
        raise ValueError(f"WCI must be >= 0, got {wci}")
    conf = confidence_term(m, delta)

    def g(c: float) -> float:
        return 4.0 * m * wci * c**3 + 8.0 * m * conf * c**4 - 1.0

    lo, hi = 0.0, 1.0
    while g(hi) < 0:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if g(mid) < 0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class PacBayesTerms:
    """Every term of the bound at c (SPEC: report c* and every term at c*)."""

    c: float
    curvature_term: float
    kl_term: float
    confidence_term: float
    bound: float
    delta: float
    m: int
    l_adv: float


def pac_bayes_terms(
    l_adv: float, wci: float, m: int, delta: float, c: float | None = None
) -> PacBayesTerms:
    """Terms of the second-order PAC-Bayes bound at c (default: the minimiser c*).

    This is an approximation, not a certificate: the expansion keeps second-order
    terms and c* is chosen after seeing the data.
    """
    c_star = optimal_c(wci, m, delta) if c is None else c
    conf = confidence_term(m, delta)
    return PacBayesTerms(
        c=c_star,
        curvature_term=0.5 * c_star * wci,
        kl_term=wci / (2.0 * c_star),
        confidence_term=conf,
        bound=pac_bayes_bound(c_star, l_adv, wci, m, delta),
        delta=delta,
        m=m,
        l_adv=l_adv,
    )
