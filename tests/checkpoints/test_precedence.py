"""The one precedence rule: flag > checkpoint metadata > timm config > default."""

from __future__ import annotations

import itertools

import pytest

from wciaudit.checkpoints import Resolved, resolve


@pytest.mark.parametrize("present", list(itertools.product([False, True], repeat=3)))
def test_the_first_stated_value_wins_and_names_its_source(present: tuple[bool, ...]) -> None:
    values = [v if p else None for v, p in zip(("f", "m", "t"), present, strict=True)]
    got = resolve("x", *values, "d")
    sources = ["flag", "checkpoint metadata", "timm config"]
    expected = next(
        ((v, s) for v, s in zip(values, sources, strict=True) if v is not None), ("d", "default")
    )
    assert (got.value, got.source) == expected and got.name == "x"


def test_falsy_values_still_count_as_stated() -> None:
    # 0 classes or an eps of 0 is a statement, not an absence
    assert resolve("eps", 0.0, 0.1, None, 8 / 255) == Resolved("eps", 0.0, "flag")
    assert resolve("mean", None, (), None, None).source == "checkpoint metadata"
    assert resolve("size", None, None, None, None) == Resolved("size", None, "default")
