"""wciaudit.stats: rank correlations against scipy and against brute force."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from wciaudit.stats import average_ranks, kendall_tau, rank_p_values, spearman_rho, tau_null_sd

SEQUENCES = [
    ([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]),
    ([1, 2, 2, 3, 4, 4, 5], [1, 3, 2, 2, 5, 4, 4]),  # ties in both
    ([0.3, 0.1, 0.9, 0.5, 0.7, 0.2], [5, 6, 1, 2, 3, 9]),
    ([1, 2, 3], [3, 2, 1]),
]


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


def _tau_b_by_definition(x, y) -> float:
    """tau_b from the sums over all ordered pairs (Kendall 1945), no shortcuts."""
    n = len(x)
    s = sum(_sign(x[i] - x[j]) * _sign(y[i] - y[j]) for i in range(n) for j in range(n))
    nx = sum(_sign(x[i] - x[j]) ** 2 for i in range(n) for j in range(n))
    ny = sum(_sign(y[i] - y[j]) ** 2 for i in range(n) for j in range(n))
    return s / math.sqrt(nx * ny)


def _ranks_by_counting(values) -> list[float]:
    """Rank of v = (number below) + (number equal + 1) / 2."""
    return [sum(w < v for w in values) + (sum(w == v for w in values) + 1) / 2 for v in values]


@pytest.mark.parametrize(("x", "y"), SEQUENCES)
def test_correlations_match_scipy(x, y):
    stats = pytest.importorskip("scipy.stats")
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_correlations_random_against_brute_force_and_scipy():
    rng = random.Random(0)
    try:
        from scipy import stats
    except ImportError:  # the brute-force references still run
        stats = None
    for _ in range(50):
        n = rng.randint(3, 12)
        x = [rng.randint(0, 5) for _ in range(n)]
        y = [rng.random() for _ in range(n)]
        if len(set(x)) < 2:
            continue
        assert kendall_tau(x, y) == pytest.approx(_tau_b_by_definition(x, y), abs=1e-12)
        rho = statistics.correlation(_ranks_by_counting(x), _ranks_by_counting(y))
        assert spearman_rho(x, y) == pytest.approx(rho, abs=1e-12)
        if stats is not None:
            assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
            assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_average_ranks_share_ties():
    rng = random.Random(1)
    for _ in range(20):
        values = [rng.randint(0, 4) for _ in range(rng.randint(1, 10))]
        assert average_ranks(values) == _ranks_by_counting(values)
    assert average_ranks([]) == []


def test_correlations_known_values_and_undefined():
    assert kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert spearman_rho([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert kendall_tau([1, 2], [1, 2]) is None  # fewer than 3 pairs
    assert spearman_rho([1, 1, 1], [1, 2, 3]) is None  # constant: undefined
    assert kendall_tau([2, 2, 2], [1, 2, 3]) is None
    with pytest.raises(ValueError, match="same length"):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        spearman_rho([1, 2, float("nan")], [1, 2, 3])


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_tau_null_sd_is_the_exact_sd_over_all_orders(n):
    """Without ties every ordering is equally likely under no association: the SD of
    tau over all n! orderings is the formula's, exactly."""
    base = list(range(n))
    taus = [kendall_tau(base, list(p)) for p in itertools.permutations(base)]
    assert statistics.fmean(taus) == pytest.approx(0.0, abs=1e-12)
    assert statistics.pstdev(taus) == pytest.approx(tau_null_sd(n), rel=1e-12)
    assert tau_null_sd(1) is None


def test_p_values_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    x, y = SEQUENCES[2]
    kp, sp = rank_p_values(x, y)
    assert kp == pytest.approx(stats.kendalltau(x, y).pvalue, rel=1e-12)
    assert sp == pytest.approx(stats.spearmanr(x, y).pvalue, rel=1e-12)
    assert rank_p_values([1, 1, 1], [1, 2, 3]) == (None, None)  # undefined, not NaN
