"""The track page, the comparison page and the single report of real scans, measured in a
real headless Chromium with the network blocked.

A probe script (page_probe.js) added to a copy of each page measures the rendered page:
the plotly toolbar must cover no title, tick label, annotation or colour bar, a legend no
axis label; gap_err's ticks must be round percentages; no name or hash may break inside a
piece (names break only at their dots and underscores). The page itself counts its
uncaught errors on ``<body data-errors>``.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from chromium import NEEDS_CHROMIUM, body_attr, console_errors, dump_dom

from wciaudit import AuditResult, scan
from wciaudit.config import LoadOptions
from wciaudit.report import write_report, write_track_page
from wciaudit.track import TrackResult, track

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "sample_models" / "run_digits_cnn"
ARCH = ROOT / "sample_models" / "digits_cnn.py"
PROBE = Path(__file__).with_name("page_probe.js")
#: the report's own rule: a difference is coloured beyond this many SEs of the difference
NOISE_SIGMAS = 2.0
SMALL = dict(train_samples=200, test_samples=200, hessian_samples=100, masking_samples=0)

pytestmark = NEEDS_CHROMIUM


def open_page(page: Path, work: Path, width: int = 1280) -> tuple[str, str, dict]:
    """Open a copy of ``page`` with the probe added; return (DOM, stderr, probe)."""
    probed = work / f"probed-{width}-{page.name}"
    text = page.read_text(encoding="utf-8")
    probed.write_text(
        text.replace("</body>", f"<script>\n{PROBE.read_text()}\n</script>\n</body>"),
        encoding="utf-8",
    )
    dom, stderr = dump_dom(probed, work / "profile", window=f"{width},2400")
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found is not None, "the probe did not run"
    return dom, stderr, json.loads(html.unescape(found.group(1)))


def figures_in(page: Path) -> int:
    """How many figures the page carries (its JSON blob, as written)."""
    blob = re.search(
        r'<script type="application/json" id="wciaudit-figures">(.*?)</script>',
        page.read_text(encoding="utf-8"),
        flags=re.S,
    )
    assert blob is not None
    return len(json.loads(blob.group(1)))


def assert_clean_render(dom: str, stderr: str, probe: dict, charts: int) -> None:
    """No error, every chart drawn, nothing under the toolbar or a legend."""
    assert body_attr(dom, "data-errors") == "0", body_attr(dom, "data-error-messages")
    assert console_errors(stderr) == []
    assert body_attr(dom, "data-charts") == str(charts)
    assert dom.count('class="main-svg"') >= charts
    assert len(probe["charts"]) == charts
    for chart in probe["charts"]:
        assert chart["toolbar"], chart["id"]
        assert chart["under_toolbar"] == [], (chart["id"], chart["under_toolbar"])
        assert chart["under_legend"] == [], (chart["id"], chart["under_legend"])


class _Cells(HTMLParser):
    """The rows of the first ``<table>`` of class ``css``: (class attribute, text) per cell."""

    def __init__(self, css: str) -> None:
        super().__init__()
        self.css, self.depth, self.rows, self.cell = css, 0, [], None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "table" and self.css in (a.get("class") or "").split() and not self.rows:
            self.depth = 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self.cell = [a.get("class") or "", ""]

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append((self.cell[0], " ".join(self.cell[1].split())))
            self.cell = None
        elif self.depth and tag == "table":
            self.depth = 0

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell[1] += data


def table_rows(dom: str, css: str) -> list[list[tuple[str, str]]]:
    parser = _Cells(css)
    parser.feed(dom)
    return [row for row in parser.rows if row]


def settings_of(dom: str) -> dict[str, str]:
    """The track page's Settings list, term -> text."""
    part = dom[dom.index('id="settings-title"') :]
    part = part[: part.index("</dl>")]
    terms = re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", part, flags=re.S)
    return {
        html.unescape(k): " ".join(html.unescape(re.sub("<[^>]+>", "", v)).split())
        for k, v in terms
    }


# -- the track page --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrackResult, Path]:
    """Three epochs of the shipped run under long file names, scanned with the Hessian
    cap (1000) above the train split (200), and the page drawn from them."""
    work = tmp_path_factory.mktemp("track")
    run = work / "a_run_folder_with_a_rather_long_name"
    run.mkdir()
    for epoch in (1, 15, 40):
        shutil.copy(
            RUN / f"epoch_{epoch}.safetensors",
            run / f"robust_overfitting_checkpoint_epoch_{epoch:03d}.safetensors",
        )
    result = track(
        [run],
        "sample",
        options=LoadOptions(arch=str(ARCH)),
        eps="0.1",
        train_samples=200,
        test_samples=200,
        masking_samples=0,
        cache_dir=work / "cache",
    )
    return result, write_track_page(result, work / "track.html")


@pytest.fixture(scope="module")
def track_opened(tracked, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, dict]:
    """The track page opened once at the default width: (DOM, stderr, probe), read by
    every test of that render (each Chromium start takes seconds)."""
    _, page = tracked
    return open_page(page, tmp_path_factory.mktemp("track_opened"))


def test_track_page_renders_cleanly(track_opened) -> None:
    dom, stderr, probe = track_opened
    assert_clean_render(dom, stderr, probe, charts=6)


def test_track_settings_say_what_the_scans_used(tracked, track_opened) -> None:
    result, _ = tracked
    used = {e.result.dataset.hessian_samples for e in result.entries}
    assert used == {200}  # the whole train split: less than the 1000 asked for
    dom, _, _ = track_opened
    settings = settings_of(dom)
    assert "Hessian 200 (at most 1000 asked)" in settings["samples"]
    assert "digits_cnn.py" in settings["arch"]


def test_track_gap_err_ticks_are_round_percentages(track_opened) -> None:
    _, _, probe = track_opened
    ticks = next(c["y2ticks"] for c in probe["charts"] if c["id"] == "fig-gap")
    assert len(ticks) >= 2, ticks
    values = []
    for tick in ticks:
        assert re.fullmatch(r"[−-]?\d+%", tick), ticks
        values.append(int(tick.replace("−", "-").rstrip("%")))
    steps = {b - a for a, b in zip(values, values[1:], strict=False)}
    assert len(steps) == 1 and steps.pop() in (1, 2, 5, 10, 20, 25, 50), ticks


def test_track_names_and_hashes_break_only_between_pieces(tracked, tmp_path: Path) -> None:
    """At the narrowest window headless Chromium opens (500 px) the long names wrap,
    at their dots and underscores only; hashes never wrap; the charts stay clear."""
    _, page = tracked
    dom, stderr, probe = open_page(page, tmp_path, width=500)
    assert probe["width"] <= 520
    assert probe["broken"] == []
    assert_clean_render(dom, stderr, probe, charts=6)


# -- the comparison page and the single report ---------------------------------------------
@pytest.fixture(scope="module")
def scanned() -> list[AuditResult]:
    """Real results: the clean and the PGD-trained sample model at eps 0.1, and the PGD
    one at eps 0.05 (measured differently: the page must warn)."""
    models = ROOT / "sample_models"
    return [
        scan(models / "digits_resnet_clean.safetensors", "sample", eps="0.1", **SMALL),
        scan(models / "digits_resnet_pgd.safetensors", "sample", eps="0.1", **SMALL),
        scan(models / "digits_resnet_pgd.safetensors", "sample", eps="0.05", **SMALL),
    ]


def test_comparison_shows_ses_and_colours_only_beyond_noise(scanned, tmp_path: Path) -> None:
    from wciaudit.report.single import COMPARED, se_of
    from wciaudit.track.result import figure_of

    page = write_report(scanned, tmp_path / "cmp.html")
    dom, stderr, probe = open_page(page, tmp_path)
    # three results x (layers, bound, convergence where Hutchinson ran) + the overlay
    assert figures_in(page) >= 7
    assert_clean_render(dom, stderr, probe, charts=figures_in(page))
    rows = {row[0][1]: row[1:] for row in table_rows(dom, "cmp")[1:]}
    coloured = noise = 0
    for label, key, _ in COMPARED:
        cells = rows[label]
        assert len(cells) == len(scanned)
        ref, ref_se = figure_of(scanned[0], key), se_of(scanned[0], key)
        for result, (css, text) in zip(scanned, cells, strict=True):
            value, se = figure_of(result, key), se_of(result, key)
            # an SE of 0 (accuracy 100% or 0%: binomial) is not printed as "± 0"
            assert ("±" in text) == bool(se and value is not None), (label, text)
            if result is scanned[0] or value is None or ref is None or value == ref:
                continue
            if se is None and ref_se is None:
                continue  # nothing says how noisy it is: the bound
            beyond = abs(value - ref) > NOISE_SIGMAS * math.hypot(ref_se or 0.0, se or 0.0)
            marked = "better" in css.split() or "worse" in css.split()
            assert marked == beyond, (label, text)
            assert ("within noise" in text) == (not beyond), (label, text)
            coloured += beyond
            noise += not beyond
    assert coloured and noise  # both cases occur on this page
    warnings = re.findall(r"result 3 differs from result 1 in eps: ([^<]*)<", dom)
    assert warnings == ["0.05 vs 0.1"]


def test_single_report_of_a_real_scan_renders_offline(scanned, tmp_path: Path) -> None:
    page = write_report(scanned[1:2], tmp_path / "single.html")
    dom, stderr, probe = open_page(page, tmp_path)
    assert figures_in(page) >= 2  # the layers and the bound at least
    assert_clean_render(dom, stderr, probe, charts=figures_in(page))
