"""The SE of a trace covers the draw of the Hessian subset: over many subsets of n = 50
out of a population of N = 400, the seed-to-seed sd of the trace agrees with the median
reported SE.

With 40 subsets the sample sd is within about +-25 % of the true sd (2 SE of an sd
estimate, sqrt(1 / (2 * 39)) ~ 11 %), so the window [0.5, 2] fails only for an SE that
is wrong by a factor, not by chance.
"""

from __future__ import annotations

import statistics

import pytest
import torch
from reference import mlp
from torch import nn

from wciaudit.curvature import Objective, ggn_traces, hutchinson_traces

POPULATION, SUBSET, DRAWS = 400, 50, 40


def _population() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return torch.randn(POPULATION, 12, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (POPULATION,), generator=g
    )


def _subset(seed: int) -> torch.Tensor:
    return torch.randperm(POPULATION, generator=torch.Generator().manual_seed(seed))[:SUBSET]


def _sd_over_median_se(estimate) -> dict[str, float]:  # noqa: ANN001
    x, y = _population()
    runs = [estimate(x[_subset(s)], y[_subset(s)], s) for s in range(DRAWS)]
    out = {}
    for k, name in enumerate(n.name for n in runs[0]):
        traces = [r[k].trace for r in runs]
        ses = [r[k].se for r in runs]
        out[name] = statistics.stdev(traces) / statistics.median(ses)
    return out


def test_exact_route_subset_se_is_calibrated() -> None:
    model = mlp(nn.ReLU)
    names = ["1.weight", "3.weight", "5.weight"]

    def estimate(x, y, seed):  # noqa: ANN001, ANN202
        obj = Objective(model, x, y, names, 64, torch.device("cpu"), n_population=POPULATION)
        est = ggn_traces(obj, memory_bytes=2**29, seed=0)
        for e in est:
            assert (
                e.se == e.sample_se > 0 and e.probe_se == 0 and e.se_covers == ("hessian-subset",)
            )
        return est

    ratios = _sd_over_median_se(estimate)
    assert all(0.5 <= r <= 2 for r in ratios.values()), ratios


def _two_stage(e) -> None:  # noqa: ANN001
    assert e.se_covers == ("probes", "hessian-subset")
    assert abs(e.se**2 - e.probe_se**2 - e.sample_se**2) <= 1e-9 * e.se**2


def _first_look(e) -> None:  # noqa: ANN001
    assert e.probes == 1 and e.se == e.probe_se > 0 and e.sample_se == 0


@pytest.mark.parametrize(
    ("options", "check"),
    [
        pytest.param({"max_probes": 60}, _two_stage, id="two-stage"),
        # one probe per group (the WCI rounds' first look): the spread between groups is
        # the whole SE, which overstates by f = 50 / 400 of the groups' own spread only
        pytest.param({"probes": 1}, _first_look, id="one-probe-per-group"),
    ],
)
def test_hutchinson_se_is_calibrated(options: dict, check) -> None:  # noqa: ANN001
    model = mlp(nn.GELU)
    names = ["1.weight", "5.weight"]

    def estimate(x, y, seed):  # noqa: ANN001, ANN202
        obj = Objective(model, x, y, names, 64, torch.device("cpu"), n_population=POPULATION)
        est = hutchinson_traces(
            obj, **{"tol": 0.05, "max_probes": 200, "min_probes": 10, "seed": seed, **options}
        )
        for e in est:
            check(e)
        return est

    ratios = _sd_over_median_se(estimate)
    assert all(0.5 <= r <= 2 for r in ratios.values()), ratios


def test_whole_split_has_no_subset_part() -> None:
    model = mlp(nn.ReLU)
    x, y = _population()
    obj = Objective(
        model, x[:SUBSET], y[:SUBSET], ["1.weight"], 64, torch.device("cpu"), n_population=SUBSET
    )
    (e,) = ggn_traces(obj, memory_bytes=2**29, seed=0)
    assert e.se == 0 and e.se_covers == ()
    (h,) = hutchinson_traces(obj, seed=0, max_probes=30, tol=0.05, min_probes=10)
    assert h.sample_se == 0 and h.se == h.probe_se and h.se_covers == ("probes",)
