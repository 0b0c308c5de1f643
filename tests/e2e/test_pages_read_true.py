"""The report reads true in a real headless Chromium (network blocked): every layer is
named on the chart's axis, the verdict says how many layers WCI counts, the header names
the normalisation, and a ``--plotly cdn`` page opened offline says where its charts
would be rather than leaving blank space."""

from __future__ import annotations

import math
import re
from pathlib import Path

from chromium import NEEDS_CHROMIUM, body_attr
from test_pages_browser import assert_clean_render, figures_in, open_page

from wciaudit.report import write_report
from wciaudit.result import AuditResult, LayerResult

pytestmark = NEEDS_CHROMIUM


def smooth_network(n_layers: int = 6) -> AuditResult:
    """A hand-built ViT-like result: every layer but the head with Tr(H) <= 0."""
    layers = []
    for k in range(n_layers):
        head = k == n_layers - 1
        name = "head.weight" if head else f"blocks.{k}.attn.qkv.weight"
        trace = 4.0 if head else -20.0 * (k + 1)
        layers.append(
            LayerResult(
                name=name,
                shape=[10, 8],
                numel=80,
                frob_norm=1.0 + k,
                trace=trace,
                trace_se=0.5 + k,
                probes=12,
                method="hutchinson",
                converged=True,
                wci_term=(1.0 + k) * math.sqrt(max(trace, 0.0)),
                flag=None if head else "non-positive trace: contributes 0 to WCI",
                se_covers=["probes", "attack-starts"],
            )
        )
    r = AuditResult(layers=layers, wci=sum(la.wci_term for la in layers), wci_se=0.3)
    r.se_covers = {"wci": ["probes", "attack-starts"]}
    r.pac_bayes.c, r.pac_bayes.l_adv, r.pac_bayes.m = 0.01, 1.2, 300  # draws the bound(c) chart
    r.pac_bayes.delta = 0.05
    r.checkpoint.path = "digits_vit"
    r.checkpoint.mean, r.checkpoint.std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    r.config = {"preprocessing_source": {"mean": "timm config", "std": "timm config"}}
    return r


def _text(dom: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", dom).replace("&lt;", "<").split())


def test_layer_chart_names_every_layer_on_its_axis(tmp_path: Path) -> None:
    result = smooth_network()
    page = write_report([result], tmp_path / "report.html")
    dom, stderr, probe = open_page(page, tmp_path)
    assert_clean_render(dom, stderr, probe, charts=figures_in(page))
    chart = next(c for c in probe["charts"] if c["id"] == "r0-layers")
    assert chart["yticks"] == [la.name for la in result.layers]


def test_verdict_and_header_say_what_wci_counts_and_the_normalisation(tmp_path: Path) -> None:
    page = write_report([smooth_network()], tmp_path / "report.html")
    dom, _, _ = open_page(page, tmp_path)
    verdict = dom[dom.index('class="card verdict"') :]
    verdict = _text(verdict[: verdict.index("</table>")])
    assert "counts 1 of 6 layers" in verdict
    assert (
        "5 of 6 layers have Tr(H) <= 0 at the adversarial points and add 0: WCI and its SE "
        "are those of the other 1 layer alone" in verdict
    )
    assert re.search(r'class="warning wci-layers"', dom)
    header = _text(dom[dom.index("<dt>Normalisation</dt>") :][:400])
    assert "mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) (from timm config)" in header


def test_cdn_page_offline_says_where_each_chart_would_be(tmp_path: Path) -> None:
    page = write_report([smooth_network()], tmp_path / "cdn.html", plotly="cdn")
    dom, _, probe = open_page(page, tmp_path)
    assert body_attr(dom, "data-errors") == "0", body_attr(dom, "data-error-messages")
    assert body_attr(dom, "data-charts") == "0"
    figures = figures_in(page)
    assert figures >= 2
    assert body_attr(dom, "data-charts-missing") == str(figures)
    assert len(probe["missing"]) == figures
    for chart in probe["missing"]:
        assert "needs plotly.js" in chart["text"] and "--plotly inline" in chart["text"]
        assert chart["box"] is not None  # shown, not hidden


def test_inline_page_shows_no_missing_chart_note(tmp_path: Path) -> None:
    page = write_report([smooth_network()], tmp_path / "inline.html")
    dom, _, probe = open_page(page, tmp_path)
    assert body_attr(dom, "data-charts-missing") == "0"
    assert probe["missing"] == []
