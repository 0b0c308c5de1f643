"""The standard errors of the trace estimates: one family, two-stage sampling.

Every route's estimate is a mean over a sample drawn in up to two stages (Cochran
1977): stage one draws the n Hessian examples out of the split's N (f = n / N; f = 1
when the examples are the whole split), stage two draws probes (Hutchinson, Hutch++)
or labels (sampled-label GGN) given the examples. With B the spread of the
first-stage units' values and W the variance the second stage adds,

    Var(T) = (1 - f) B + f W  =  W + (1 - f) (B - W),

the probe (or label) part W and the subset part (1 - f)(B - W), the latter kept at
>= 0 (:func:`two_stage_parts`). The variants differ in the unit of stage one:
- :func:`grouped_mean_and_se`: random groups of examples (Hutchinson, one probe
  vector per group);
- :func:`two_stage_se`: single examples (sampled labels, k per example);
- :func:`subset_mean_and_se`: single examples with no second stage (exact GGN);
- :func:`mean_and_se`: i.i.d. values, one stage (Hutch++'s residual probes, the
  benchmarks).

The second-moment sums are kept in the form each route has always used (s2 - s1 mean
against s2 - n mean^2): they round differently, and results stay bit for bit what they
were. :func:`se_degrees_of_freedom` and :func:`se_upper_factor` say how far an SE
itself can be trusted (the stop rules read them).
"""

from __future__ import annotations

import math

import torch

from .estimate import TraceEstimate

__all__ = [
    "grouped_mean_and_se",
    "mean_and_se",
    "se_degrees_of_freedom",
    "se_upper_factor",
    "subset_mean_and_se",
    "two_stage_parts",
    "two_stage_se",
]


def two_stage_parts(between: float, within: float, f: float) -> tuple[float, float]:
    """(probe variance, subset variance) of Var = W + (1 - f)(B - W): ``within`` as it
    is and max((1 - f)(B - W), 0); the subset part is 0 when f >= 1 (the whole split)."""
    if f >= 1.0:
        return within, 0.0
    return within, max((1 - f) * (between - within), 0.0)


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Sample mean and its standard error sd / sqrt(n) (n - 1 in the variance)."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.inf
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def grouped_mean_and_se(
    values: torch.Tensor, sizes: torch.Tensor, n: int, n_population: int | None
) -> tuple[float, float, float, float]:
    """Trace and SEs from per-group probe values, a two-stage sample (Cochran 1977, 10.8).

    Stage one draws the n examples out of the split's N (the groups are a random
    partition of them, so the G groups are clusters of a random sample); stage two
    draws p independent probes per group. With q_gj = v_gj^T H_g v_gj (H_g the Hessian
    of group g's share of the mean loss) and ybar_g = mean_j q_gj:

        T = sum_g ybar_g
        W = sum_g s_g^2 / p                                (probe variance, s_g^2 over j)
        B = G/(G-1) sum_g (ybar_g - m_g T / n)^2           (between groups, ratio form)
        Var(T) = (1 - f) B + f W,  f = n / N              (f = 1 when N is None)

    B holds the probe noise of the ybar_g as well, so Var(T) = W + (1 - f)(B - W): the
    probe part and the subset part, the latter kept at >= 0.

    With one probe per group W cannot be measured, and B alone is the SE: the "ultimate
    cluster" estimator (Kalton 1979), which covers probes and subset together and
    overstates Var(T) by f times the between-group part of B (nothing for a subset
    small beside its split; at f = 1, the whole split, all of it). It is reported as
    the probe part (``probe_se``, an upper bound), the subset part as 0.

    Args:
        values: (G, p) probe values per group.
        sizes: (G,) examples per group.

    Returns:
        (trace, se, probe_se, sample_se), se^2 = probe_se^2 + sample_se^2.
    """
    values = values.double()
    groups, p = values.shape
    ybar = values.mean(1)
    trace = float(ybar.sum())
    if p < 2:
        if groups < 2:
            return trace, math.inf, math.inf, 0.0
        se = math.sqrt(_between(ybar, sizes, n, trace))
        return trace, se, se, 0.0
    w = float(values.var(1, unbiased=True).sum()) / p
    f = 1.0
    if n_population is not None and n < n_population and groups > 1:
        f = n / n_population
    w, sample_var = two_stage_parts(_between(ybar, sizes, n, trace) if f < 1.0 else 0.0, w, f)
    return trace, math.sqrt(w + sample_var), math.sqrt(w), math.sqrt(sample_var)


def _between(ybar: torch.Tensor, sizes: torch.Tensor, n: int, trace: float) -> float:
    """B = G/(G-1) sum_g (ybar_g - m_g T / n)^2, the spread of the group totals in
    ratio form (:func:`grouped_mean_and_se`)."""
    groups = ybar.shape[0]
    resid = ybar - sizes.double() / n * trace
    return groups / (groups - 1) * float(resid.pow(2).sum())


def two_stage_se(
    sum_v: float, sum_v2: float, sum_within: float, n: int, n_population: int | None
) -> tuple[float, float, float]:
    """(se, probe_se, sample_se) of the mean of per-example means v_i over n examples.

    Stage one is the examples (B = s_b^2 / n, s_b^2 the sample variance of the v_i),
    stage two the k labels of each (W = mean_i s_wi^2 / k / n).

    Args:
        sum_v, sum_v2: sum of v_i and of v_i^2 over all n examples.
        sum_within: sum over examples of s_wi^2 / k (the variance of v_i given example i).
        n: examples; n_population: size of the split they were drawn from (None: all).
    """
    f = 1.0 if n_population is None else min(1.0, n / n_population)
    mean = sum_v / n
    s_b2 = max(sum_v2 - n * mean * mean, 0.0) / (n - 1) if n > 1 else math.inf
    w = sum_within / n
    within, subset = two_stage_parts(s_b2, w, f)
    probe_var, sample_var = within / n, subset / n
    return math.sqrt(probe_var + sample_var), math.sqrt(probe_var), math.sqrt(sample_var)


def subset_mean_and_se(
    s1: float, s2: float, n: int, n_population: int | None
) -> tuple[float, float, tuple[str, ...]]:
    """Mean of n per-example values from their sum and sum of squares, and the SE of a
    simple random sample of n out of N: sqrt(1 - n/N) * sd / sqrt(n) (Cochran 1977, 2.8).

    Returns:
        (mean, se, covers): se is 0 and covers empty when the n examples are the whole
        population (``n_population`` None or n).
    """
    mean = s1 / n
    if n_population is None or n >= n_population or n < 2:
        return mean, 0.0, ()
    var = max(s2 - s1 * mean, 0.0) / (n - 1)
    return mean, math.sqrt((1 - n / n_population) * var / n), ("hessian-subset",)


#: the standard normal's 10 % quantile: the stop rules read an SE at the upper end of
#: its one-sided 90 % interval
_Z_STOP = -1.2815515655446004


def se_degrees_of_freedom(e: TraceEstimate) -> float:
    """Degrees of freedom of a Hutchinson estimate's SE: G (p - 1) for p probes per
    group over G groups (the within-group spread), G - 1 for one probe per group (the
    spread between groups); infinite for the routes whose SE rests on every example."""
    groups = len(e.group_shares)
    if e.method != "hutchinson" or not isinstance(e.probes, int) or groups == 0:
        return math.inf
    return float(groups * (e.probes - 1) if e.probes > 1 else max(groups - 1, 1))


def se_upper_factor(dof: float) -> float:
    """sqrt(dof / chi2_{0.1}(dof)): the factor that takes an SE with ``dof`` degrees of
    freedom to the upper end of its one-sided 90 % confidence interval (Wilson and
    Hilferty's cube-root approximation to the chi-square quantile, within 1 % from 3
    degrees of freedom on).

    Example:
        >>> round(se_upper_factor(16), 2), round(se_upper_factor(160), 2)
        (1.31, 1.08)
    """
    if not math.isfinite(dof):
        return 1.0
    h = 2.0 / (9.0 * dof)
    q = dof * max(1.0 - h + _Z_STOP * math.sqrt(h), 0.05) ** 3
    return math.sqrt(dof / q)
