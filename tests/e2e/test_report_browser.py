"""The HTML report in a real headless Chromium, opened from disk with the network blocked.

The page counts its own uncaught errors on ``<body data-errors>`` and the number of
figures it drew on ``<body data-charts>``; the dumped DOM must show plotly's SVG,
no error, and none of the hostile strings turned into elements.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chromium import NEEDS_CHROMIUM, body_attr, console_errors, dump_dom  # noqa: E402
from test_report import BREAKOUT, HOSTILE, make_result  # noqa: E402

from wciaudit.report import write_report  # noqa: E402

pytestmark = [
    *NEEDS_CHROMIUM,
    pytest.mark.slow,  # a browser start and a 5 MB page: over 3 s each
]


def test_single_report_renders_offline(tmp_path: Path) -> None:
    page = write_report([make_result()], tmp_path / "report.html")
    dom, stderr = dump_dom(page, tmp_path / "profile")
    assert body_attr(dom, "data-errors") == "0", body_attr(dom, "data-error-messages")
    assert body_attr(dom, "data-charts") == "3"
    assert dom.count('class="main-svg"') >= 3
    assert console_errors(stderr) == []
    # the table script ran: the row counter was filled in
    assert "4 layers" in dom


def test_hostile_comparison_renders_as_text(tmp_path: Path) -> None:
    hostile = make_result(path=f"{HOSTILE}.safetensors", layer_prefix=BREAKOUT)
    hostile.checkpoint.metadata = {HOSTILE: BREAKOUT}
    hostile.checkpoint.arch = HOSTILE
    page = write_report([hostile, make_result(scale=3.0)], tmp_path / "cmp.html")
    dom, stderr = dump_dom(page, tmp_path / "profile")
    assert body_attr(dom, "data-errors") == "0", body_attr(dom, "data-error-messages")
    # two results x (layers, bound, convergence) + the overlay
    assert body_attr(dom, "data-charts") == "7"
    assert dom.count('class="main-svg"') >= 7
    assert console_errors(stderr) == []
    # the browser built no element from the hostile strings; they are shown as text
    assert "<img" not in dom
    assert "alert(1)</script>" not in dom
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom
