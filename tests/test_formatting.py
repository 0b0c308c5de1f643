"""wciaudit.formatting: one way to write a figure, on the pages, the terminal and in gates."""

from __future__ import annotations

import math

import pytest

from wciaudit.formatting import (
    MISSING,
    fmt_estimate,
    fmt_num,
    fmt_p,
    fmt_pm,
    fmt_sigmas,
    fmt_signed,
    md_cell,
    one_line,
    shorten,
    svg_text,
)


def test_missing_figures_read_the_same_everywhere():
    for formatter in (fmt_num, fmt_signed, fmt_p, fmt_estimate):
        assert formatter(None) == MISSING
    assert fmt_pm(None, 0.1) == MISSING and fmt_num(math.nan) == MISSING
    assert fmt_estimate(None, missing="null") == "null"


@pytest.mark.parametrize(
    ("value", "se", "text"),
    [
        (12.3, 0.4, "12.3 ± 0.4"),
        (10.01, 0.0, "10.01 ± 0"),
        (7.14, None, "7.14"),
        (123456.0, 12.0, "1.235e+05 ± 12"),
    ],
)
def test_estimate_is_four_digits_and_a_two_digit_se(value, se, text):
    assert fmt_estimate(value, se) == text


def test_pm_gives_the_value_the_se_decimals():
    assert fmt_pm(12.3, 0.4) == "12.30 ± 0.40"
    assert fmt_pm(0.123456, 0.0012) == "0.1235 ± 0.0012"
    assert fmt_pm(5.0, 0.0) == "5"  # no SE to show


def test_coefficients_p_values_and_margins():
    assert fmt_signed(2 / 3) == "+0.667" and fmt_signed(-0.5, 2) == "-0.50"
    assert fmt_p(1e-6) == "< 0.0001" and fmt_p(0.0123) == "0.012"
    assert fmt_sigmas(5.75) == "5.8" and fmt_sigmas(1234.5) == "1234"


def test_text_helpers():
    assert one_line("a\n  b\tc ") == "a b c"
    assert md_cell("a|b\nc") == "a\\|b c"
    assert svg_text("<b>&") == "&lt;b&gt;&amp;"
    assert shorten("abcdef", 4) == "abc…" and shorten("abcdef", 4, keep="end") == "…def"
    assert shorten("abc", 4) == "abc"
