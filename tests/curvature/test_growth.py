"""The growth rule every adaptive estimator shares (:mod:`wciaudit.curvature.growth`),
against the forms each estimator had written inline before they shared it."""

from __future__ import annotations

import math

import pytest

from wciaudit.curvature.growth import more_probes, short_of


def _stop_rule_form(have: int, needed: float, cap: int) -> int:
    extra = max(needed * 1.1 - have, have / 2, 4)
    return math.ceil(min(extra, cap - have))


def _allocation_form(have: int, needed: float, cap: int) -> int | None:
    want = min(cap, math.ceil(1.1 * needed))
    return int(min(cap - have, max(want - have, math.ceil(have / 2), 4))) if want > have else None


def _label_form(k: int, needed: float, cap: int) -> int:
    total = max(k, math.ceil(1.1 * needed))
    return 0 if total <= k else int(min(max(total, k + k // 2), cap) - k)


CASES = [
    (h, n, c)
    for h in (1, 2, 3, 7, 10, 33, 199)
    for n in (0.0, 0.5, 3.0, 9.99, 10.0, 57.3, 1e4)
    for c in (200, 400)
    if h < c
]


@pytest.mark.parametrize(("have", "needed", "cap"), CASES)
def test_one_rule_gives_every_former_form(have: int, needed: float, cap: int) -> None:
    assert more_probes(have, needed, cap) == _stop_rule_form(have, needed, cap)
    alloc = _allocation_form(have, needed, cap)
    assert (alloc is not None) == short_of(have, needed)
    if alloc is not None:
        assert more_probes(have, needed, cap) == alloc
    label = more_probes(have, needed, cap, least=0, half=math.floor)
    assert (label if short_of(have, needed) else 0) == _label_form(have, needed, cap)


def test_an_unmeasurable_need_goes_to_the_cap() -> None:
    assert more_probes(10, math.inf, 200) == 190 and short_of(10, math.inf)
    assert more_probes(10, math.inf, 200, half=math.floor) == 190
