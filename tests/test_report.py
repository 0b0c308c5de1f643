"""The HTML report: self-contained, escaped, atomic, small enough; and `wciaudit report`."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs
from typer.testing import CliRunner

from wciaudit.bounds import pac_bayes_terms, wci_term_se, weight_curvature_index
from wciaudit.cli.app import app
from wciaudit.formatting import fmt_num, fmt_pct, fmt_pm
from wciaudit.report import charts, render_report, write_report
from wciaudit.report import single as report_mod
from wciaudit.result import (
    AttackInfo,
    AuditResult,
    CheckpointInfo,
    DatasetInfo,
    Environment,
    Gate,
    LayerResult,
    Metrics,
    PacBayes,
    Timings,
)

HOSTILE = "<img src=x onerror=alert(1)>"
BREAKOUT = "</script><script>alert(1)</script>"


def make_result(
    n_layers: int = 4,
    path: str = "sample_models/digits_cnn.safetensors",
    scale: float = 1.0,
    layer_prefix: str = "net",
) -> AuditResult:
    """A hand-built result: one flagged layer, Hutchinson histories, one exact layer."""
    layers = []
    for k in range(n_layers):
        frob = 1.0 + 0.1 * k
        exact = k == 1
        flagged = k == 2
        trace = -0.02 if flagged else scale * (0.5 + 0.05 * k)
        se = 0.0 if exact else 0.03 * abs(trace)
        history = (
            []
            if exact
            else [[10 * (j + 1), trace * (1 + 0.1 / (j + 1)), se * 2 / (j + 1)] for j in range(6)]
        )
        layers.append(
            LayerResult(
                name=f"{layer_prefix}.{k}.weight",
                shape=[16, 8, 3, 3],
                numel=16 * 8 * 9,
                frob_norm=frob,
                trace=trace,
                trace_se=se,
                probes="exact" if exact else 60,
                method="exact-ggn" if exact else "hutchinson",
                converged=not flagged,
                wci_term=frob * math.sqrt(max(trace, 0.0)),
                wci_term_se=wci_term_se(frob, trace, se),
                flag="non-positive trace: contributes 0 to WCI" if flagged else None,
                history=history,
            )
        )
    wci, wci_se = weight_curvature_index(
        [la.frob_norm for la in layers], [la.trace for la in layers], [la.trace_se for la in layers]
    )
    t = pac_bayes_terms(l_adv=0.9, wci=wci, m=1000, delta=0.05)
    return AuditResult(
        checkpoint=CheckpointInfo(
            path=path,
            sha256="ab" * 32,
            format="safetensors",
            arch="DigitsCNN",
            num_params=123_456,
            metadata={"dataset": "digits", "note": "trained with PGD"},
        ),
        dataset=DatasetInfo(
            name="digits",
            n_train=1000,
            n_test=797,
            input_shape=[1, 8, 8],
            num_classes=10,
            source="sample",
            reason="shipped sample",
            hessian_samples=1000,
        ),
        config={
            "eps": 8 / 255,
            "attack": "pgd",
            "norm": "linf",
            "steps": 10,
            "step_size": 2.5 * 8 / 255 / 10,
            "restarts": 1,
            "seed": 0,
            "tol": 0.05,
            "max_probes": 200,
            "hessian_samples": 1000,
            "delta": 0.05,
            "device": "cpu",
            "curvature": "auto",
        },
        metrics=Metrics(
            clean_acc_train=0.97,
            clean_acc_test=0.95,
            robust_acc_train=0.71,
            robust_acc_test=0.62,
            clean_loss_train=0.1,
            clean_loss_test=0.15,
            robust_loss_train=0.9,
            robust_loss_test=1.2,
            gap_loss=0.3,
            gap_err=0.09,
            gap_loss_se=0.05,
            gap_err_se=0.023,
            robust_acc_train_se=0.014,
            robust_acc_test_se=0.017,
        ),
        layers=layers,
        wci=wci,
        wci_se=wci_se,
        pac_bayes=PacBayes(
            c=t.c,
            curvature_term=t.curvature_term,
            kl_term=t.kl_term,
            confidence_term=t.confidence_term,
            bound=t.bound,
            delta=0.05,
            m=1000,
            l_adv=0.9,
        ),
        timings=Timings(
            load_s=0.2, attack_s=3.1, trace_s=12.5, total_s=16.0, started_at="2025-01-02T03:04:05Z"
        ),
        environment=Environment(
            python="3.11.9",
            torch="2.4.0",
            timm="1.0.16",
            platform="Linux",
            device="cpu",
            dtype="float32",
        ),
        notes=["1 layer(s) flagged (non-positive trace or not converged): net.2.weight"],
    )


@pytest.fixture(scope="module")
def single_html() -> str:
    return _without_plotly(render_report([make_result()]))


def _without_plotly(html: str) -> str:
    """The page minus plotly.js's own source (4.8 MB of library code, checked once below)."""
    js = get_plotlyjs()
    assert html.count(js) == 1
    return html.replace(js, "/* plotly.js */")


def test_self_contained(single_html: str) -> None:
    html = single_html
    assert html.startswith("<!DOCTYPE html>")
    lowered = html.lower()
    # no external resources of any kind (plotly.js is inlined verbatim, once: see the fixture)
    needles = (
        'src="http',
        "src='http",
        'href="http',
        "href='http",
        "<link",
        "@import",
        "url(",
        "<iframe",
        "<img",
        "http://",
        "https://",
        "//cdn",
    )
    assert [n for n in needles if n in lowered] == []
    # every <script> is inline
    assert re.search(r"<script[^>]+\bsrc=", html) is None
    assert "Plotly.newPlot" in html


def test_shows_the_sections(single_html: str) -> None:
    html = single_html
    for text in (
        "8/255",
        "DigitsCNN",
        "abababababab",
        "123,456",
        "2025-01-02T03:04:05Z",
        "PGD-10",
        "PAC-Bayes bound at c*",
        "net.2.weight",
        "not a certificate",
        "upper bound on the true robust",
        "exact-ggn",
        "took the exact Gauss-Newton route",
        "No gate thresholds",
        "Sample sizes",
        "torch 2.4.0",
    ):
        assert text in html, text
    figures = json.loads(_figure_blob(html))
    assert set(figures) == {"r0-layers", "r0-bound", "r0-conv"}
    # the flagged layer is drawn in the flag colour
    bars = figures["r0-layers"]["data"][2]
    assert bars["marker"]["color"][2] == charts.FLAG_COLOUR
    assert bars["marker"]["color"][0] != charts.FLAG_COLOUR
    # the table has one row per layer and the flagged one is marked
    assert html.count('<tr class="flagged">') == 1


def _figure_blob(html: str) -> str:
    m = re.search(
        r'<script type="application/json" id="wciaudit-figures">(.*?)</script>', html, flags=re.S
    )
    assert m is not None
    return m.group(1)


def test_autoattack_and_its_loss_attack_side_by_side() -> None:
    r = make_result()
    r.config["attack"] = "autoattack"
    r.attacks = AttackInfo(
        accuracy_from="autoattack",
        loss_from="apgd-ce",
        hessian_points_from="apgd-ce",
        robust_acc={
            "autoattack": {"train": 0.71, "train_se": 0.014, "test": 0.62, "test_se": 0.017},
            "apgd-ce": {"train": 0.734, "train_se": 0.014, "test": 0.641, "test_se": 0.017},
        },
    )
    html = _without_plotly(render_report([r]))
    row = re.search(r"robust accuracy, apgd-ce.*?</tr>", html, flags=re.S)
    assert row is not None and fmt_pct(0.734, 0.014) in row.group(0)
    assert fmt_pct(0.641, 0.017) in row.group(0)
    assert "robust accuracy, autoattack" in html and "robust loss, apgd-ce" in html
    assert "AUTOATTACK, seed 0" in html and "AUTOATTACK-10" not in html


def test_gate_checks_shown() -> None:
    # the shape wciaudit.gate writes: one dict per threshold
    checks = [
        {
            "figure": "wci",
            "op": "<=",
            "option": "--max-wci",
            "threshold": 1.0,
            "value": 7.0,
            "se": 0.2,
            "status": "fail",
            "message": "wci = 7.00 ± 0.20 exceeds --max-wci 1 by 30 SE",
        },
        {
            "figure": "robust_acc_test",
            "op": ">=",
            "option": "--min-robust-acc",
            "threshold": 0.5,
            "value": 0.62,
            "se": 0.017,
            "status": "pass",
            "message": "within --min-robust-acc 0.5",
        },
    ]
    r = make_result()
    r.gate = Gate(passed=False, failures=[checks[0]["message"]], checks=checks)
    html = _without_plotly(render_report([r]))
    assert "FAILED" in html
    assert "--max-wci" in html
    assert html.count('<tr class="bad">') == 1
    assert "exceeds" in html


def test_hostile_strings_are_escaped() -> None:
    r = make_result(path=f"models/{HOSTILE}.safetensors", layer_prefix=BREAKOUT)
    r.checkpoint.arch = HOSTILE
    r.checkpoint.metadata = {HOSTILE: BREAKOUT, "x": "\"'><svg onload=alert(1)>&amp;"}
    r.dataset.name = BREAKOUT
    r.notes.append(HOSTILE)
    html = _without_plotly(render_report([r, make_result(path=BREAKOUT)]))
    # nothing of the hostile strings survives as markup
    assert "<img" not in html
    assert "<svg onload" not in html
    assert "alert(1)</script>" not in html
    assert "<script>alert(1)" not in html
    # the text is still there, escaped, for a reader
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    # the page has exactly the script elements it ships: error trap, figure JSON, plotly, ours
    assert html.count("<script") == 4
    assert html.count("</script>") == 4
    # the figure JSON holds no raw < > & and parses back to the names
    blob = _figure_blob(html)
    assert not set("<>&") & set(blob)
    figures = json.loads(blob)
    names = figures["r0-layers"]["names"]
    # plotly draws pseudo-HTML: it gets entities, which it shows as the literal text
    assert names[0] == "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;.0.weight"


def test_comparison_view() -> None:
    clean = make_result(path="digits_resnet_clean.safetensors", scale=4.0)
    robust = make_result(path="digits_resnet_pgd.safetensors", scale=1.0)
    robust.layers.append(
        LayerResult(
            name="head.weight",
            shape=[10, 64],
            numel=640,
            frob_norm=2.0,
            trace=0.1,
            trace_se=0.01,
            probes=40,
            wci_term=2.0 * math.sqrt(0.1),
        )
    )
    html = _without_plotly(render_report([clean, robust]))
    assert 'id="comparison"' in html
    assert "Comparison of 2 results" in html
    figures = json.loads(_figure_blob(html))
    assert {"r0-layers", "r1-layers", "cmp-terms"} <= set(figures)
    overlay = figures["cmp-terms"]["data"]
    assert len(overlay) == 2
    assert len(overlay[0]["y"]) == 5  # union of layer names, one row each
    assert overlay[0]["x"][-1] is None  # head.weight is not in the first result
    # the layers are named on the axis, not only on hover (a screenshot names them)
    ticks = figures["cmp-terms"]["layout"]["yaxis"]["ticktext"]
    assert ticks[-1] == "head.weight" and len(ticks) == 5
    assert "side-by-side" in html
    # lower WCI than the reference is highlighted as better
    assert 'class="n better"' in html
    text = " ".join(html.split())
    assert (
        "4 of the 5 layer names appear in every result and are compared; 1 appears in only some"
        in text
    )
    assert "results with 4, 5 layers" in text


def test_comparison_says_when_no_layer_name_is_shared() -> None:
    """Two results with disjoint layer names: nothing is compared with itself, and the
    page says so instead of counting every name as matched."""
    cnn = make_result(path="cnn.safetensors", layer_prefix="features")
    vit = make_result(path="vit.safetensors", layer_prefix="blocks")
    text = " ".join(_without_plotly(render_report([cnn, vit])).split())
    assert "No layer name is shared by every result" in text
    assert "matched by name" not in text
    assert "The 8 layers below each show the results that have them" in text


def test_size_200_layers(tmp_path: Path) -> None:
    r = make_result(n_layers=200, layer_prefix="blocks.11.attention.projection_with_a_long_name")
    path = write_report([r], tmp_path / "big.html")
    size = path.stat().st_size
    assert size < 5_000_000, size


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.html"

    def boom(results: object, **options: object) -> str:
        raise RuntimeError("render failed")

    monkeypatch.setattr(report_mod, "render_report", boom)
    with pytest.raises(RuntimeError):
        report_mod.write_report([make_result()], target)
    assert list(tmp_path.iterdir()) == []
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError):
        report_mod.write_report([make_result()], target)
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_write_report_and_empty(tmp_path: Path) -> None:
    path = write_report([make_result()], tmp_path / "r.html")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    from wciaudit.errors import ConfigError

    with pytest.raises(ConfigError):
        render_report([])


def test_missing_figures_render() -> None:
    """A weights-only result: no data, no traces, no bound; the page still renders."""
    r = AuditResult(
        checkpoint=CheckpointInfo(path="w.safetensors", arch="x"),
        layers=[
            LayerResult(name="a.weight", shape=[2, 2], numel=4, frob_norm=1.0, trace=None, probes=0)
        ],
    )
    html = _without_plotly(render_report([r]))
    assert "No bound" in html
    assert "No layer has a Hutchinson history" in html


def test_number_formats() -> None:
    assert fmt_num(None) == "–"
    assert fmt_num(0.000123456) == "0.0001235"
    assert fmt_num(1234567.0) == "1.235e+06"
    assert fmt_num(12) == "12"
    assert fmt_pm(0.123456, 0.0123) == "0.123 ± 0.012"
    assert fmt_pm(7.0, 0.2) == "7.00 ± 0.20"
    assert fmt_pct(0.71, 0.014) == "71.0% ± 1.4"
    assert fmt_pct(None) == "–"


def test_cli_report(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    make_result().save(a)
    make_result(path="other.safetensors", scale=2.0).save(b)
    out = tmp_path / "report.html"
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(a), str(b), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file()
    assert "Comparison of 2 results" in out.read_text(encoding="utf-8")


def test_cli_report_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "report.html"
    res = runner.invoke(app, ["report", str(tmp_path / "missing.json"), "-o", str(out)])
    assert res.exit_code == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    res = runner.invoke(app, ["report", str(bad), "-o", str(out)])
    assert res.exit_code == 2
    future = tmp_path / "future.json"
    future.write_text(json.dumps({"schema_version": 99}), encoding="utf-8")
    res = runner.invoke(app, ["report", str(future), "-o", str(out)])
    assert res.exit_code == 2
    assert not out.exists()


def test_cli_report_subprocess(tmp_path: Path) -> None:
    import subprocess
    import sys

    a = make_result().save(tmp_path / "a.json")
    out = tmp_path / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "wciaudit", "report", str(a), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0
    assert "wrote" in proc.stdout


# -- plotly modes, comparison noise and warnings, notes, footer, names -----------------------
def test_plotly_cdn_mode_is_small_and_names_the_installed_version() -> None:
    from plotly.offline import get_plotlyjs_version

    inline = render_report([make_result()])
    cdn = render_report([make_result()], plotly="cdn")
    url = f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"
    assert f'<script src="{url}" charset="utf-8"></script>' in cdn
    assert len(cdn) < len(inline) - len(get_plotlyjs()) + 10_000
    assert "no network request" in inline and "network needed" in cdn
    with pytest.raises(report_mod.ConfigError, match="plotly mode"):
        render_report([make_result()], plotly="offline")


def test_comparison_colours_only_differences_beyond_noise() -> None:
    a = make_result()
    b = make_result(scale=1.0)
    b.wci = a.wci + 0.5 * math.hypot(a.wci_se, b.wci_se) * 2  # 1 SE of the difference: noise
    c = make_result(scale=1.0)
    c.wci = a.wci + 3.0 * 2 * math.hypot(a.wci_se, c.wci_se)  # 6 SE: real
    row = report_mod._summary_row([a, b, c], "WCI", "wci", True)
    assert [cell["better"] for cell in row["cells"]][1:] == [None, False]
    assert [cell["noise"] for cell in row["cells"]][1:] == [True, False]
    assert row["cells"][0]["se"] == a.wci_se
    html = render_report([a, b, c])
    assert "within noise" in html and f"± {a.wci_se:.2g}"[:4] in html
    # the rule: |a - b| > 2 sqrt(se_a^2 + se_b^2); no SE on either side says nothing
    assert report_mod.beyond_noise(0.3, 0.1, 0.1) is True
    assert report_mod.beyond_noise(0.28, 0.1, 0.1) is False
    assert report_mod.beyond_noise(0.01, None, None) is None


def test_comparison_warns_when_eps_data_or_arch_differ() -> None:
    a, b = make_result(), make_result()
    assert "measured differently" not in render_report([a, b])
    b.config["eps"] = 0.1
    b.dataset.name = "cifar10"
    b.checkpoint.arch = "resnet18"
    warnings = report_mod.comparison_warnings([a, b])
    assert warnings == [
        "result 2 differs from result 1 in eps: 0.1 vs 8/255",
        "result 2 differs from result 1 in dataset: cifar10 vs digits",
        "result 2 differs from result 1 in architecture: resnet18 vs DigitsCNN",
    ]
    html = render_report([a, b])
    assert "measured differently" in html and "eps: 0.1 vs 8/255" in html


def test_single_report_states_the_disclaimer_once_and_cites_no_spec() -> None:
    html = render_report([make_result()], plotly="cdn")
    assert html.count("not a certificate") == 1
    assert (
        "the project's SPEC" not in html and "arXiv 2410.07719" in html and "docs/spec.md" in html
    )


def test_long_names_break_between_parts() -> None:
    r = make_result(layer_prefix="features.denseblock4.denselayer16")
    html = render_report([r])
    assert "features.<wbr>denseblock4.<wbr>denselayer16.<wbr>" in html
    assert 'class="hash"' in html


def test_report_cli_plotly_and_csv(tmp_path: Path) -> None:
    make_result().save(tmp_path / "a.json")
    res = CliRunner().invoke(
        app,
        [
            "report",
            str(tmp_path / "a.json"),
            "-o",
            str(tmp_path / "r.html"),
            "--plotly",
            "cdn",
            "--csv",
            str(tmp_path / "t.csv"),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.html").stat().st_size < 200_000
    assert (tmp_path / "t.csv").read_text().startswith("checkpoint,sha256,")
    res = CliRunner().invoke(
        app, ["report", str(tmp_path / "a.json"), "--csv", str(tmp_path / "no" / "t.csv")]
    )
    assert res.exit_code == 2 and "output folder does not exist" in res.output


def test_track_page_settings_name_what_was_used() -> None:
    from wciaudit.report import render_track
    from wciaudit.report.track_page import _settings_rows
    from wciaudit.track.result import TrackEntry, TrackResult

    entries = []
    for epoch in (1, 2, 3):
        r = make_result(scale=epoch)
        r.checkpoint.arch = "digits_cnn.py:DigitsCNN"
        r.dataset.hessian_samples = 300  # the setting is a cap: the train split had 300
        entries.append(TrackEntry(epoch, f"run/epoch_{epoch}.safetensors", "ab" * 32, False, r))
    run = TrackResult(
        entries=entries,
        epoch_source="file names",
        settings={
            "arch": {"file_sha256": "0" * 64, "class": None},
            "config": {**make_result().config, "hessian_samples": 1000},
        },
    )
    rows = dict(_settings_rows(run))
    assert rows["arch"] == "digits_cnn.py:DigitsCNN"
    assert "Hessian 300 (at most 1000 asked)" in rows["samples"]
    html = render_track(run, plotly="cdn")
    assert "a models.py file" not in html and "Hessian 300" in html
    gap = json.loads(re.search(r'id="wciaudit-figures">(.*?)</script>', html, re.S).group(1))[
        "fig-gap"
    ]
    assert (
        gap["layout"]["yaxis2"]["tickformat"] == ".0%"
        and gap["layout"]["modebar"]["orientation"] == "v"
    )
