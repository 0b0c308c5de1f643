"""Tests of wciaudit.data.splits: stratified, seeded subsets."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wciaudit.data import load_data, stratified_subset

# ---------------------------------------------------------------------------------------
# subsets
# ---------------------------------------------------------------------------------------


def test_subsets_are_stratified_seeded_and_reported():
    a = load_data("sample", train_samples=100, test_samples=40, seed=3)
    b = load_data("sample", train_samples=100, test_samples=40, seed=3)
    c = load_data("sample", train_samples=100, test_samples=40, seed=4)
    assert (len(a.y_train), len(a.y_test)) == (100, 40)
    assert (a.n_train_total, a.n_test_total) == (1000, 797)
    assert "100 of 1000" in a.source
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)

    full = load_data("sample")
    share = torch.bincount(full.y_train, minlength=10).double() * 100 / 1000
    counts = torch.bincount(a.y_train, minlength=10).double()
    assert torch.all((counts - share).abs() < 1)


def test_subset_larger_than_split_keeps_all():
    s = load_data("sample", train_samples=5000)
    assert len(s.y_train) == 1000 and s.n_train_total == 1000


def test_stratified_subset_example():
    y = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    idx = stratified_subset(y, 5, seed=0)
    assert torch.bincount(y[idx], minlength=3).tolist() == [3, 2, 0]
    assert torch.equal(idx, torch.sort(idx).values)
    assert not torch.equal(stratified_subset(torch.arange(100) % 2, 10, 0),
                           stratified_subset(torch.arange(100) % 2, 10, 1))  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 6), min_size=1, max_size=80),
    frac=st.floats(0.0, 1.2),
    seed=st.integers(0, 2**31 - 1),
)
def test_stratified_subset_properties(labels, frac, seed):
    y = torch.tensor(labels, dtype=torch.int64)
    n = int(frac * len(labels))
    idx = stratified_subset(y, n, seed)
    assert idx.dtype == torch.int64
    assert idx.numel() == min(n, len(labels))
    assert len(set(idx.tolist())) == idx.numel()
    assert all(0 <= i < len(labels) for i in idx.tolist())
    assert torch.equal(idx, torch.sort(idx).values)
    assert torch.equal(idx, stratified_subset(y, n, seed))
    if n < len(labels):
        counts = torch.bincount(y, minlength=7).double()
        got = torch.bincount(y[idx], minlength=7).double()
        assert torch.all((got - counts * n / len(labels)).abs() < 1)
