"""WCI's SE from group shares (wciaudit.uncertainty) against brute force.

The closed forms are checked against the same formulas written out with numpy, against
the per-layer delta method (``bounds.weight_curvature_index``) where the two must agree,
and by Monte Carlo: group shares simulated from a population with known per-example
traces (correlated across layers), subsets drawn without replacement, random groups,
probe noise and attack-start noise, many replicates; the mean reported variance must
match the replicates' variance of WCI within a tolerance that follows from the replicate
count.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wciaudit import bounds
from wciaudit.uncertainty import attack_variance, sensitivities, wci_error


def _wci(frob: np.ndarray, traces: np.ndarray) -> float:
    return float(np.sum(frob * np.sqrt(np.maximum(traces, 0.0))))


# -- closed forms ---------------------------------------------------------------------
def test_sensitivities_are_the_derivative_of_wci() -> None:
    frob = np.array([1.5, 0.3, 2.0])
    traces = np.array([4.0, 0.7, 11.0])
    a = sensitivities(frob.tolist(), traces.tolist())
    for k in range(3):
        h = 1e-6 * traces[k]
        up, down = traces.copy(), traces.copy()
        up[k] += h
        down[k] -= h
        numeric = (_wci(frob, up) - _wci(frob, down)) / (2 * h)
        assert a[k] == pytest.approx(numeric, rel=1e-8)
    assert sensitivities([1.0, 1.0], [0.0, -2.0]) == [0.0, 0.0]


def test_whole_split_is_the_per_layer_delta_method() -> None:
    # no subset part (n = N, or N unknown): only probes, independent per layer
    frob, traces, probe_ses = [1.2, 0.4, 3.0], [5.0, 0.8, 20.0], [0.3, 0.05, 1.1]
    shares = [[t / 4] * 4 for t in traces]
    expected = bounds.weight_curvature_index(frob, traces, probe_ses)[1]
    for population in (None, 8):
        e = wci_error(frob, traces, probe_ses, shares, [2, 2, 2, 2], population)
        assert e.se == pytest.approx(expected, rel=1e-12)
        assert e.probe_se == pytest.approx(expected, rel=1e-12)
        assert e.sample_se == 0 and e.attack_se == 0
        assert e.covers == ("probes",)
    (one,) = [wci_error([2.0], [9.0], [0.6], [[3.0, 6.0]], [1, 1], None)]
    assert one.se == pytest.approx(2.0 * 0.6 / (2 * 3.0), rel=1e-12)


def test_subset_part_is_cochran_on_linearised_group_values() -> None:
    rng = np.random.default_rng(3)
    layers, groups = 5, 13
    sizes = np.array([8] * 6 + [7] * 7)  # sizes that differ by one: the ratio form
    n, population = int(sizes.sum()), 400
    shares = rng.gamma(4.0, 1.0, size=(layers, groups)) * sizes / n
    frob = rng.uniform(0.5, 3.0, size=layers)
    probe_ses = rng.uniform(0.0, 0.05, size=layers)
    traces = shares.sum(axis=1)
    e = wci_error(
        frob.tolist(),
        traces.tolist(),
        probe_ses.tolist(),
        shares.tolist(),
        sizes.tolist(),
        population,
        tails=False,  # Cochran's variance; the t widening is tested on its own
    )

    a = frob / (2 * np.sqrt(traces))
    u = a @ shares
    b = groups / (groups - 1) * np.sum((u - sizes / n * u.sum()) ** 2)
    w = np.sum((a * probe_ses) ** 2)
    sample_var = (1 - n / population) * (b - w)
    assert sample_var > 0
    assert e.sample_se == pytest.approx(math.sqrt(sample_var), rel=1e-10)
    assert e.probe_se == pytest.approx(math.sqrt(w), rel=1e-10)
    assert e.se == pytest.approx(math.sqrt(w + sample_var), rel=1e-10)
    assert e.covers == ("probes", "hessian-subset")


def test_correlated_layers_add_linearly_not_in_quadrature() -> None:
    # two layers whose shares are proportional move together from subset to subset:
    # their subset SEs add (a1 + c a2), which per-layer quadrature would miss
    base = np.array([1.0, 2.5, 0.4, 1.7, 3.1, 0.9])
    c = 3.0
    shares = [base.tolist(), (c * base).tolist()]
    traces = [base.sum(), c * base.sum()]
    frob = [1.0, 1.0 / math.sqrt(c)]  # equal linearised contributions
    sizes, population = [5] * 6, 300
    both = wci_error(frob, traces, [0.0, 0.0], shares, sizes, population)
    singles = [
        wci_error([f], [t], [0.0], [s], sizes, population).sample_se
        for f, t, s in zip(frob, traces, shares, strict=True)
    ]
    assert both.sample_se == pytest.approx(sum(singles), rel=1e-12)
    assert both.sample_se == pytest.approx(math.sqrt(2) * math.hypot(*singles), rel=1e-12)


def test_no_subset_part_for_one_group_or_the_whole_split() -> None:
    args = ([1.0], [4.0], [0.1], [[1.0, 3.0]])
    assert wci_error(*args, [2, 2], 4).covers == ("probes",)  # n = N
    assert wci_error([1.0], [4.0], [0.1], [[4.0]], [4], 100).covers == ("probes",)  # G = 1
    assert wci_error(*args, [2, 2], 100).covers == ("probes", "hessian-subset")


def test_attack_variance_is_half_the_squared_paired_differences() -> None:
    rng = np.random.default_rng(5)
    s1 = rng.normal(1.0, 0.2, size=(4, 16))
    s2 = s1 + rng.normal(0.0, 0.05, size=(4, 16))
    a = rng.uniform(0.1, 2.0, size=4)
    expected = np.sum((a @ s1 - a @ s2) ** 2) / 2
    assert attack_variance(a.tolist(), s1.tolist(), s2.tolist()) == pytest.approx(
        expected, rel=1e-12
    )
    # one layer alone: a one-hot weight
    one = np.sum((s1[2] - s2[2]) ** 2) / 2
    assert attack_variance([0, 0, 1, 0], s1.tolist(), s2.tolist()) == pytest.approx(one, rel=1e-12)
    assert attack_variance(a.tolist(), s1.tolist(), s1.tolist()) == 0


def test_attack_part_enters_in_quadrature_and_covers() -> None:
    args = ([1.0, 2.0], [4.0, 9.0], [0.1, 0.2], [[1.0, 3.0], [4.0, 5.0]], [2, 2], 40)
    without = wci_error(*args)
    with_zero = wci_error(*args, attack_var=0.0)
    with_some = wci_error(*args, attack_var=0.25)
    assert "attack-starts" not in without.covers
    assert with_zero.covers[-1] == with_some.covers[-1] == "attack-starts"
    assert with_some.attack_se == 0.5
    # Cochran's second stage: (1 - f)(B - W - A) + W + A, with f = n / N = 4 / 40
    f = 4 / 40
    sample_var = max(without.sample_se**2 - (1 - f) * 0.25, 0.0)
    expected = math.sqrt(without.probe_se**2 + 0.25 + sample_var)
    assert with_some.se == pytest.approx(expected, rel=1e-12)


# -- properties -----------------------------------------------------------------------
_layer = st.tuples(
    st.floats(0.01, 10.0),  # frob
    st.lists(st.floats(0.01, 10.0), min_size=6, max_size=6),  # group shares
    st.floats(0.0, 0.5),  # probe se
)


@settings(max_examples=60, deadline=None)
@given(
    layers=st.lists(_layer, min_size=1, max_size=4),
    population=st.one_of(st.none(), st.integers(20, 1000)),
    attack=st.one_of(st.none(), st.floats(0.0, 4.0)),
    scale=st.floats(0.1, 10.0),
    order=st.permutations(range(6)),
)
def test_wci_error_properties(layers, population, attack, scale, order) -> None:  # noqa: ANN001
    frob = [f for f, _, _ in layers]
    shares = [s for _, s, _ in layers]
    traces = [math.fsum(s) for s in shares]
    probe = [p for _, _, p in layers]
    sizes = [4, 4, 3, 3, 3, 3]
    e = wci_error(frob, traces, probe, shares, sizes, population, attack_var=attack)
    # the parts add in quadrature
    assert e.se**2 == pytest.approx(
        e.probe_se**2 + e.sample_se**2 + e.attack_se**2, rel=1e-9, abs=1e-300
    )
    # the groups are exchangeable: relabelling them (with their sizes) changes nothing
    perm = wci_error(
        frob,
        traces,
        probe,
        [[s[g] for g in order] for s in shares],
        [sizes[g] for g in order],
        population,
        attack_var=attack,
    )
    assert perm.se == pytest.approx(e.se, rel=1e-9, abs=1e-12)
    # WCI is linear in the norms: the SE scales with them (attack variance as a square)
    scaled = wci_error(
        [scale * f for f in frob],
        traces,
        probe,
        shares,
        sizes,
        population,
        attack_var=None if attack is None else scale**2 * attack,
    )
    assert scaled.se == pytest.approx(scale * e.se, rel=1e-9, abs=1e-12)
    # a layer with a non-positive trace contributes nothing, whatever its shares
    extra = wci_error(
        frob + [5.0],
        traces + [-1.0],
        probe + [3.0],
        shares + [[-1 / 6] * 6],
        sizes,
        population,
        attack_var=attack,
    )
    assert extra.se == pytest.approx(e.se, rel=1e-9, abs=1e-12)


# -- Monte Carlo ----------------------------------------------------------------------
POPULATION, SUBSET, GROUPS, REPLICATES = 400, 64, 16, 3000
FROB = np.array([1.0, 0.5, 2.0])
PROBE_SD = np.array([0.02, 0.04, 0.0])  # the probe part of each trace's SE


def _population(rng: np.random.Generator) -> np.ndarray:
    """Per-example traces (layers x examples) driven by one shared factor: the layers
    move together from subset to subset, as layers of one network do."""
    z = rng.gamma(2.0, 0.5, size=POPULATION)
    own = rng.gamma(2.0, 0.25, size=(3, POPULATION))
    return np.array([[1.0], [2.0], [0.5]]) + np.array([[0.6], [1.2], [0.2]]) * z + own


def _group_shares(t: np.ndarray, idx: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Layers x groups: sum over the group's examples of t / n."""
    out = np.zeros((t.shape[0], GROUPS))
    np.add.at(out.T, group, t[:, idx].T / SUBSET)
    return out


def _agree(reported: np.ndarray, wci: np.ndarray) -> tuple[float, float, float]:
    """(mean reported variance, variance of WCI, the SE of their difference)."""
    dev2 = (wci - wci.mean()) ** 2
    se = math.sqrt(reported.var(ddof=1) / reported.size + dev2.var(ddof=1) / dev2.size)
    return float(reported.mean()), float(wci.var(ddof=1)), se


@functools.cache
def _simulate(attack_sd: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per replicate: WCI of the first run, its reported variance, the attack part."""
    rng = np.random.default_rng(seed)
    base = _population(rng)
    sizes = [SUBSET // GROUPS] * GROUPS
    wci, reported, attack = (np.empty(REPLICATES) for _ in range(3))
    for r in range(REPLICATES):
        idx = rng.choice(POPULATION, SUBSET, replace=False)
        group = rng.permutation(SUBSET) % GROUPS
        # the attack's random starts: per example, fresh in each run, shared by layers
        runs = [base + attack_sd * base * rng.standard_normal(POPULATION) for _ in range(2)]
        # one probe per group, the same in both runs (same probes, paired)
        noise = rng.standard_normal((3, GROUPS)) * (PROBE_SD / math.sqrt(GROUPS))[:, None]
        s1, s2 = (_group_shares(t, idx, group) + noise for t in runs)
        traces = s1.sum(axis=1)
        a = sensitivities(FROB.tolist(), traces.tolist())
        av = attack_variance(a, s1.tolist(), s2.tolist()) if attack_sd > 0 else None
        e = wci_error(
            FROB.tolist(),
            traces.tolist(),
            PROBE_SD.tolist(),
            s1.tolist(),
            sizes,
            POPULATION,
            attack_var=av,
            tails=False,  # the variance itself; the t widening is tested on its own
        )
        wci[r], reported[r], attack[r] = _wci(FROB, traces), e.se**2, e.attack_se**2
    return wci, reported, attack


def test_reported_variance_matches_subset_and_probe_spread() -> None:
    wci, reported, _ = _simulate(attack_sd=0.0, seed=7)
    mean, true, se = _agree(reported, wci)
    # 4 SE of the Monte-Carlo difference; with 3000 replicates that is about 10 % of it
    assert abs(mean - true) <= 4 * se, (mean, true, se)
    assert se < 0.05 * true


def test_attack_part_matches_the_spread_over_starts() -> None:
    # the subset and the probes held fixed: only the starts move
    rng = np.random.default_rng(11)
    base = _population(rng)
    idx = rng.choice(POPULATION, SUBSET, replace=False)
    group = rng.permutation(SUBSET) % GROUPS
    wci, attack = np.empty(REPLICATES), np.empty(REPLICATES)
    for r in range(REPLICATES):
        s1, s2 = (
            _group_shares(base + 0.3 * base * rng.standard_normal(POPULATION), idx, group)
            for _ in range(2)
        )
        traces = s1.sum(axis=1)
        a = sensitivities(FROB.tolist(), traces.tolist())
        wci[r] = _wci(FROB, traces)
        attack[r] = attack_variance(a, s1.tolist(), s2.tolist())
    mean, true, se = _agree(attack, wci)
    assert abs(mean - true) <= 4 * se, (mean, true, se)


def test_all_three_sources_together_are_not_counted_twice() -> None:
    wci, reported, attack = _simulate(attack_sd=0.4, seed=13)
    mean, true, se = _agree(reported, wci)
    assert abs(mean - true) <= 4 * se, (mean, true, se, attack.mean())


def test_t_quantile_agrees_with_scipy() -> None:
    from scipy import stats

    from wciaudit.uncertainty import t_quantile

    for dof in (3, 5, 15, 100, 1e6):
        for p in (0.975, 0.9772498680518208):
            assert t_quantile(p, dof) == pytest.approx(stats.t.ppf(p, dof), rel=2e-3)


def test_tail_factor_restores_coverage_of_a_heavy_tailed_mean() -> None:
    """A mean of 64 lognormal values (sigma 1, excess kurtosis 110), its SE from 16
    group totals: the plain 2-SE interval covers the mean in 89.5 % of 4000 draws, the
    tail-widened one in 92.1 % (95.4 % wanted: a symmetric interval cannot undo all of
    a skewed mean's lean; with sigma 1.5, 83 % and 86 %); on normal values the factor is
    within 10 % of 1 (t on 15 degrees of freedom). 4000 draws: binomial SE 0.4 %."""
    from wciaudit.uncertainty import tail_factor

    rng = np.random.default_rng(0)
    groups, per, reps = 16, 4, 4000
    mean = math.exp(0.5)
    plain = wide = 0
    for _ in range(reps):
        t = rng.lognormal(0.0, 1.0, (groups, per)).sum(1) / (groups * per)
        resid = t - t.mean()
        se = math.sqrt(groups / (groups - 1) * float((resid**2).sum()))
        dev = abs(float(t.sum()) - mean)
        plain += dev <= 2 * se
        wide += dev <= 2 * se * tail_factor(resid.tolist())
    assert plain / reps < 0.905 and wide / reps >= 0.91 and wide - plain >= 0.015 * reps
    normal = [tail_factor(rng.standard_normal(groups).tolist()) for _ in range(200)]
    assert 1.0 <= float(np.median(normal)) <= 1.1
