"""PAC-Bayes terms and WCI against their formulas (SPEC: WCI, PAC-Bayes bound terms)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wciaudit.bounds import (
    confidence_term,
    optimal_c,
    pac_bayes_bound,
    pac_bayes_terms,
    wci_term_se,
    wci_terms,
    weight_curvature_index,
)

wcis = st.floats(min_value=1e-6, max_value=1e4)
ms = st.integers(min_value=1, max_value=10**7)
deltas = st.floats(min_value=1e-6, max_value=0.5)
losses = st.floats(min_value=0.0, max_value=20.0)


def test_wci_formula_and_non_positive_traces() -> None:
    frob = [2.0, 3.0, 1.5]
    traces = [4.0, -0.5, 0.0]
    assert wci_terms(frob, traces) == [4.0, 0.0, 0.0]
    wci, se = weight_curvature_index(frob, traces, [0.4, 0.1, 0.2])
    assert wci == 4.0
    # 10 SE above 0: the delta method, d(F sqrt(T))/dT = F / (2 sqrt(T))
    assert wci_term_se(2.0, 4.0, 0.4) == pytest.approx(0.2)
    # 5 SE below 0 the term is 0 whatever the estimate: (next to) no spread
    assert wci_term_se(3.0, -0.5, 0.1) < 1e-3
    # at 0 the term F sqrt(max(T, 0)) of a normal estimate has sd F sqrt(0.23 se)
    assert wci_term_se(1.5, 0.0, 0.2) == pytest.approx(1.5 * math.sqrt(0.22995 * 0.2), rel=1e-4)
    terms = [wci_term_se(f, t, s) for f, t, s in zip(frob, traces, [0.4, 0.1, 0.2], strict=True)]
    assert se == pytest.approx(math.sqrt(sum(x * x for x in terms)))


@pytest.mark.parametrize("z", [-2.0, -0.5, 0.0, 1.0, 3.0, 9.9, 10.0, 40.0])
def test_term_se_is_the_spread_of_the_term_under_a_normal_estimate(z: float) -> None:
    """Brute force: sd of F sqrt(max(T, 0)) over 400 000 normal draws T ~ N(z se, se^2).
    The sd of a sample sd is sd / sqrt(2 n), 0.11 % here; 1 % is 9 of those, and covers
    the delta method's own error from 10 SE on (< 0.5 % in the SE)."""
    g = torch.Generator().manual_seed(int(100 * z) + 7)
    se, f = 0.3, 2.5
    draws = z * se + se * torch.randn(400_000, generator=g, dtype=torch.float64)
    brute = float((f * draws.clamp(min=0).sqrt()).std())
    assert wci_term_se(f, z * se, se) == pytest.approx(brute, rel=0.01)


def test_terms_match_the_spec_formulas() -> None:
    l_adv, wci, m, delta = 0.7, 12.0, 1000, 0.05
    t = pac_bayes_terms(l_adv, wci, m, delta, c=0.01)
    assert t.curvature_term == pytest.approx(0.01 / 2 * wci)
    assert t.kl_term == pytest.approx(wci / (2 * 0.01))
    assert t.confidence_term == pytest.approx(math.log(2 * math.sqrt(m) / delta))
    assert t.bound == pytest.approx(
        l_adv + t.curvature_term + math.sqrt((t.kl_term + t.confidence_term) / (2 * m))
    )


def test_layer_form_of_the_terms() -> None:
    """(c/2) WCI = sum_k s_k^2 Tr_k / 2 and WCI / (2c) = sum_k ||W_k||^2 / (2 s_k^2)."""
    frob, traces, c = [2.0, 0.5, 3.0], [4.0, 9.0, 0.25], 0.03
    wci, _ = weight_curvature_index(frob, traces, [0, 0, 0])
    s2 = [c * f / math.sqrt(t) for f, t in zip(frob, traces, strict=True)]
    assert sum(s * t / 2 for s, t in zip(s2, traces, strict=True)) == pytest.approx(c / 2 * wci)
    assert sum(f * f / (2 * s) for f, s in zip(frob, s2, strict=True)) == pytest.approx(
        wci / (2 * c)
    )


@settings(max_examples=200, deadline=None)
@given(l_adv=losses, wci=wcis, m=ms, delta=deltas)
def test_c_star_minimises_the_bound_on_a_grid(
    l_adv: float, wci: float, m: int, delta: float
) -> None:
    c_star = optimal_c(wci, m, delta)
    best = pac_bayes_bound(c_star, l_adv, wci, m, delta)
    for k in range(-40, 41):
        c = c_star * 10 ** (k / 10)
        assert best <= pac_bayes_bound(c, l_adv, wci, m, delta) * (1 + 1e-12) + 1e-15


@settings(max_examples=200, deadline=None)
@given(
    l_adv=losses,
    wci=wcis,
    m=ms,
    delta=deltas,
    a=st.floats(min_value=1e-6, max_value=10.0),
    b=st.floats(min_value=1e-6, max_value=10.0),
    lam=st.floats(min_value=0.0, max_value=1.0),
)
def test_bound_is_convex_in_c(
    l_adv: float, wci: float, m: int, delta: float, a: float, b: float, lam: float
) -> None:
    mid = lam * a + (1 - lam) * b
    lhs = pac_bayes_bound(mid, l_adv, wci, m, delta)
    rhs = lam * pac_bayes_bound(a, l_adv, wci, m, delta) + (1 - lam) * pac_bayes_bound(
        b, l_adv, wci, m, delta
    )
    assert lhs <= rhs * (1 + 1e-12) + 1e-12


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        confidence_term(0, 0.05)
    with pytest.raises(ValueError):
        confidence_term(10, 1.5)
    with pytest.raises(ValueError):
        pac_bayes_bound(0.0, 0.1, 1.0, 10, 0.05)
