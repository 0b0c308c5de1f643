"""Two independent Hutchinson runs on the same groups of examples as one estimate."""

from __future__ import annotations

import math

from .estimate import TraceEstimate

__all__ = ["pool"]


def pool(a: TraceEstimate, b: TraceEstimate) -> TraceEstimate:
    """Two independent Hutchinson estimates of one trace as one, on the same groups.

    The mean of all probe values; the probe part from the pooled within-group spread,
    as :func:`.standard_errors.grouped_mean_and_se` would give from all the values:
    with p = p_a + p_b probes per group and W = sum_g s_g^2 / p,

        sum_g (p - 1) s_g^2 = (p_a - 1) p_a W_a + (p_b - 1) p_b W_b
                              + p_a p_b / p * sum_g (ybar_ga - ybar_gb)^2,

    so the probe SE keeps G (p - 1) degrees of freedom (taken from the p probe totals
    alone it had p - 1, and the rounds stopped on its noise). A run of one probe per
    group adds nothing to the first sum (its ``probe_se`` is the group spread, not W).
    Without group shares the probe totals are pooled. A Hessian-subset part
    (``sample_se``) estimates the same quantity in both runs and is averaged by probes."""
    na, nb = int(a.probes), int(b.probes)
    n = na + nb
    mean = (na * a.trace + nb * b.trace) / n
    groups = len(a.group_shares)
    if groups > 0 and groups == len(b.group_shares):
        within = (na - 1) * na * a.probe_se**2 + (nb - 1) * nb * b.probe_se**2
        within += (
            na
            * nb
            / n
            * math.fsum((x - y) ** 2 for x, y in zip(a.group_shares, b.group_shares, strict=True))
        )
        probe_se = math.sqrt(within / (n - 1) / n)
    else:
        pa = a.probe_se if a.probe_se > 0 else a.se
        pb = b.probe_se if b.probe_se > 0 else b.se
        ss = (na - 1) * pa**2 * na + na * a.trace**2 + (nb - 1) * pb**2 * nb + nb * b.trace**2
        probe_se = math.sqrt(max(ss - n * mean**2, 0.0) / (n - 1) / n)
    sample_se = math.sqrt((na * a.sample_se**2 + nb * b.sample_se**2) / n)
    shares = (
        tuple((na * x + nb * y) / n for x, y in zip(a.group_shares, b.group_shares, strict=True))
        if len(a.group_shares) == len(b.group_shares)
        else ()
    )
    history = a.history + [[n, mean, math.hypot(probe_se, sample_se)]]
    return TraceEstimate(
        name=a.name,
        trace=mean,
        se=math.hypot(probe_se, sample_se),
        probes=n,
        method=a.method,
        converged=a.converged,
        stop_reason=a.stop_reason,
        history=history,
        probe_se=probe_se if a.probe_se > 0 else 0.0,
        sample_se=sample_se,
        se_covers=a.se_covers,
        # a first look's note on its SE no longer holds once probes are pooled with it
        route_reason=b.route_reason if na < 2 else a.route_reason,
        group_shares=shares,
    )
