"""The bound stage: WCI with its SE (the scan's and the monitor's one formula), what the
precision target did, and the PAC-Bayes terms."""

from __future__ import annotations

import math

import pytest

from wciaudit import bounds
from wciaudit.curvature import TraceEstimate
from wciaudit.curvature.groups import GROUPS
from wciaudit.pipeline.bound import pac_bayes, wci_figures, wci_target


def _estimate(name: str, trace: float, shares: tuple[float, ...], probe_se: float = 0.0):
    return TraceEstimate(
        name=name,
        trace=trace,
        se=0.1 * trace,
        probes=4,
        method="hutchinson",
        converged=True,
        stop_reason="tol",
        probe_se=probe_se,
        sample_se=0.1 * trace,
        group_shares=shares,
    )


def test_without_group_shares_the_se_is_the_layers_in_quadrature() -> None:
    est = [_estimate("a", 4.0, ()), _estimate("b", 9.0, ())]
    fig = wci_figures(
        [1.0, 2.0],
        est,
        [0.4, 0.9],
        n=100,
        n_population=1000,
        seed=0,
        layer_covers=["probes", "probes", "hessian-subset"],
    )
    wci, se = bounds.weight_curvature_index([1.0, 2.0], [4.0, 9.0], [0.4, 0.9])
    assert fig.wci == pytest.approx(1.0 * 2 + 2.0 * 3) == pytest.approx(wci)
    assert fig.se == se and fig.covers == ["hessian-subset", "probes"] and fig.parts == {}
    assert "layers independent" in fig.method


def test_with_group_shares_every_source_has_its_part() -> None:
    shares = tuple(4.0 + 0.5 * math.sin(g) for g in range(GROUPS))
    est = [_estimate("a", sum(shares) / GROUPS, shares, probe_se=0.05)]
    fig = wci_figures([2.0], est, [0.2], n=64, n_population=1000, seed=0)
    assert set(fig.parts) == {"probes", "hessian-subset", "attack-starts"}
    assert fig.parts["attack-starts"] == 0.0 and "attack-starts" not in fig.covers
    assert fig.se > 0 and fig.covers[0] == "probes" and "Hessian subset" in fig.method
    # the same shares as a whole population: the subset part vanishes (f = 1)
    whole = wci_figures([2.0], est, [0.2], n=64, n_population=64, seed=0)
    assert "hessian-subset" not in whole.covers and whole.se < fig.se


def test_the_target_reports_why_it_was_missed() -> None:
    shares = tuple(4.0 + 0.5 * math.sin(g) for g in range(GROUPS))
    est = [_estimate("a", 4.0, shares, probe_se=0.05)]
    fig = wci_figures([2.0], est, [0.2], n=64, n_population=1000, seed=0)
    met = wci_target(fig, est, tol=0.5, max_probes=200)
    assert met == {"tol": 0.5, "met": True, "relative_se": fig.se / fig.wci, "reason": "met"}
    missed = wci_target(fig, est, tol=1e-6, max_probes=4)
    assert not missed["met"] and "probe cap" in missed["reason"]


def test_pac_bayes_is_vacuous_above_the_loss_of_a_uniform_guess() -> None:
    terms, note = pac_bayes(1e6, 0.5, 1000, 0.05, classes=10)
    assert terms.vacuous and terms.uniform_loss == pytest.approx(math.log(10))
    assert note is not None and "vacuous" in note
    small, none = pac_bayes(0.01, 0.1, 10**6, 0.05, classes=10)
    assert small.vacuous is False and none is None
    empty, _ = pac_bayes(1.0, None, None, 0.05, classes=10)
    assert empty.bound is None and empty.delta == 0.05
