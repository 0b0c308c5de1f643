"""The SE family (:mod:`wciaudit.curvature.standard_errors`) against the two-stage
variance written out directly: Var(T) = (1 - f) B + f W (Cochran 1977, 10.8)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from wciaudit.curvature.standard_errors import (
    grouped_mean_and_se,
    mean_and_se,
    subset_mean_and_se,
    two_stage_parts,
    two_stage_se,
)


def test_two_stage_parts_split_the_variance_and_clip_the_subset_part() -> None:
    assert two_stage_parts(5.0, 2.0, 0.25) == (2.0, 0.75 * 3.0)
    assert two_stage_parts(1.0, 2.0, 0.25) == (2.0, 0.0)  # B below W: no subset part
    assert two_stage_parts(5.0, 2.0, 1.0) == (2.0, 0.0)  # the whole split


def test_grouped_se_is_the_two_stage_variance() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randn(6, 5, generator=g, dtype=torch.float64) + torch.arange(6.0)[:, None]
    sizes = torch.tensor([5, 5, 5, 5, 4, 4])
    n, big_n = 28, 112
    trace, se, probe_se, sample_se = grouped_mean_and_se(values, sizes, n, big_n)
    ybar = values.mean(1)
    t = float(ybar.sum())
    w = float(values.var(1).sum()) / 5
    b = 6 / 5 * float(((ybar - sizes.double() / n * t) ** 2).sum())
    f = n / big_n
    assert trace == pytest.approx(t, rel=1e-12)
    assert se**2 == pytest.approx((1 - f) * b + f * w, rel=1e-12)
    assert probe_se**2 == pytest.approx(w, rel=1e-12)
    assert se**2 == pytest.approx(probe_se**2 + sample_se**2, rel=1e-12)


def test_one_probe_per_group_reports_the_group_spread_as_the_probe_part() -> None:
    values = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    _trace, se, probe_se, sample_se = grouped_mean_and_se(values, torch.tensor([2, 2, 2]), 6, 60)
    assert se == probe_se > 0 and sample_se == 0


def test_label_se_is_the_two_stage_variance_over_examples() -> None:
    g = torch.Generator().manual_seed(1)
    vals = torch.rand(40, 3, generator=g, dtype=torch.float64) * torch.arange(1.0, 41.0)[:, None]
    v, within = vals.mean(1), vals.var(1) / 3
    n, big_n = 40, 100
    se, probe_se, sample_se = two_stage_se(
        float(v.sum()), float(v.pow(2).sum()), float(within.sum()), n, big_n
    )
    f = n / big_n
    s_b2 = statistics.variance(v.tolist())
    w = float(within.mean())
    assert se**2 == pytest.approx(((1 - f) * s_b2 + f * w) / n, rel=1e-9)
    assert probe_se**2 == pytest.approx(w / n, rel=1e-12)
    assert sample_se > 0
    whole = two_stage_se(float(v.sum()), float(v.pow(2).sum()), float(within.sum()), n, None)
    assert whole[2] == 0 and whole[0] == whole[1]


def test_subset_and_plain_se_match_the_textbook() -> None:
    xs = [0.3, 1.7, 2.2, 0.9, 4.1, 2.8]
    s1, s2 = math.fsum(xs), math.fsum(x * x for x in xs)
    mean, se, covers = subset_mean_and_se(s1, s2, 6, 24)
    assert mean == pytest.approx(statistics.mean(xs))
    assert se == pytest.approx(math.sqrt(0.75 * statistics.variance(xs) / 6), rel=1e-12)
    assert covers == ("hessian-subset",)
    assert subset_mean_and_se(s1, s2, 6, None)[1:] == (0.0, ())
    m, s = mean_and_se(xs)
    assert m == pytest.approx(statistics.mean(xs))
    assert s == pytest.approx(statistics.stdev(xs) / math.sqrt(6))
