"""Rank statistics over short series: Kendall's tau-b, Spearman's rho, their p-values.

Pure functions of two equally long sequences of finite numbers. ``track`` uses them to
ask whether WCI orders a run's checkpoints like the robust gap does; runs have tens of
checkpoints, so the O(n^2) pair count is exact and cheap.

Example:
    >>> kendall_tau([1, 2, 3, 4], [1, 3, 2, 4])
    0.6666666666666666
    >>> spearman_rho([1, 2, 3, 4], [1, 3, 2, 4])
    0.8
    >>> average_ranks([10, 20, 20, 5])
    [2.0, 3.5, 3.5, 1.0]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

__all__ = ["average_ranks", "kendall_tau", "rank_p_values", "spearman_rho", "tau_null_sd"]


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b (ties counted as in scipy.stats.kendalltau's default).

    tau_b = (P - Q) / sqrt((P + Q + T) (P + Q + U)), P / Q the concordant / discordant
    pairs, T / U the pairs tied in x only / y only.

    Returns:
        tau_b in [-1, 1], or None for fewer than 3 pairs or a constant series (undefined).

    Raises:
        ValueError: for sequences of different lengths or a non-finite value.
    """
    _check_pairs(x, y)
    n = len(x)
    if n < 3:
        return None
    p = q = t = u = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                t += 1
            elif dy == 0:
                u += 1
            elif (dx > 0) == (dy > 0):
                p += 1
            else:
                q += 1
    denom = math.sqrt((p + q + t) * (p + q + u))
    return None if denom == 0 else (p - q) / denom


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: the Pearson correlation of the average ranks (ties share a rank).

    Returns:
        rho in [-1, 1], or None for fewer than 3 pairs or a constant series.

    Raises:
        ValueError: for sequences of different lengths or a non-finite value.
    """
    _check_pairs(x, y)
    if len(x) < 3:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def rank_p_values(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """Two-sided p-values of Kendall's tau and Spearman's rho from scipy.

    Returns:
        ``(kendall_p, spearman_p)``; ``(None, None)`` without scipy, and None for a
        p-value scipy cannot give (a constant series).
    """
    try:
        from scipy import stats
    except ImportError:
        return None, None
    with warnings.catch_warnings():  # scipy warns on tiny n; callers report the n beside
        warnings.simplefilter("ignore")
        kp = float(stats.kendalltau(x, y).pvalue)
        sp = float(stats.spearmanr(x, y).pvalue)
    return (kp if math.isfinite(kp) else None), (sp if math.isfinite(sp) else None)


def tau_null_sd(n: int) -> float | None:
    """SD of Kendall's tau under no association, sqrt(2(2n+5) / (9n(n-1))); None for n < 2."""
    return math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1))) if n >= 2 else None


def _check_pairs(x: Sequence[float], y: Sequence[float]) -> None:
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if any(not math.isfinite(v) for v in (*x, *y)):
        raise ValueError("x and y must be finite numbers")
