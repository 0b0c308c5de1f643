"""A tracked run -> one self-contained HTML page: curves, rank correlations, checkpoints.

The page extends the same base template as the single report (one copy of the CSS,
the header, the footer and the figure script) and draws its charts with the same
palette and layout (:mod:`.charts`).

Example:
    >>> from wciaudit.track import TrackResult
    >>> render_track(TrackResult()).startswith("<!DOCTYPE html>")
    True
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..formatting import fmt_num, fmt_signed, format_eps, svg_text
from ..result import write_atomic
from ..sentences import se_covers_words
from ..stats import tau_null_sd
from ..track.result import MEASURES, TARGETS, TrackResult, figure_of, overfitting_sentence
from .charts import PALETTE, axis, base_layout
from .html import render_page

__all__ = ["render_track", "write_track_page"]

_TEMPLATE = "track.html.j2"
#: (marker key, label, colour) of the dotted epoch lines on every curve
_MARKERS = (
    ("best_robust_test_loss", "lowest robust test loss", PALETTE[3]),
    ("wci_peak", "WCI peak", PALETTE[4]),
)


def render_track(result: TrackResult, title: str | None = None, *, plotly: str = "inline") -> str:
    """The run as one HTML page: self-contained with ``plotly="inline"`` (no network
    request), a script tag to plotly's CDN with ``"cdn"``.

    Every string from a file name, metadata or the user is autoescaped by jinja2; the
    figure JSON has ``<``, ``>`` and ``&`` escaped so that it cannot end its ``<script>``.
    """
    series = result.series()
    markers = result.markers()
    return render_page(
        _TEMPLATE,
        _figures(result, series, markers),
        title=title or f"WCI track: {_run_name(result)}",
        run=result,
        rows=_rows(result),
        markers=markers,
        correlations=_correlation_rows(result),
        verdicts=_verdicts(result),
        overfitting=overfitting_sentence(result),
        wci_se_text=_wci_se_text(result),
        tau_null_sd=tau_null_sd(len(result.entries)),
        settings=_settings_rows(result),
        tool_version=result.tool_version,
        plotly=plotly,
    )


def write_track_page(
    result: TrackResult,
    path: str | os.PathLike[str],
    title: str | None = None,
    *,
    plotly: str = "inline",
) -> Path:
    """Render the page and write it atomically."""
    return write_atomic(path, render_track(result, title, plotly=plotly))


# -- tables and sentences ------------------------------------------------------------------
def _run_name(result: TrackResult) -> str:
    if not result.entries:
        return "empty run"
    parents = {Path(e.path).parent.name for e in result.entries}
    if len(parents) == 1 and "" not in parents:
        return parents.pop()
    return Path(result.entries[0].path).name


def _wci_se_text(result: TrackResult) -> str:
    """What the WCI error bars cover, from the scans' ``se_covers`` (SPEC: What an SE
    covers): one list when every scan says the same, else per scan in its JSON."""
    said = {tuple(e.result.se_covers.get("wci") or ()) for e in result.entries}
    if len(said) != 1:
        return "what each scan's se_covers lists (they differ between scans)"
    (covers,) = said
    return se_covers_words(covers) if covers else "nothing (SE 0: exact routes, no attack spread)"


def _rows(result: TrackResult) -> list[dict[str, Any]]:
    rows = []
    for e in result.entries:
        r = e.result
        figures = (
            "wci",
            "wci_se",
            "sum_frob_sq",
            "sum_trace",
            "gap_loss",
            "gap_err",
            "robust_acc_test",
            "robust_loss_test",
            "bound",
        )
        row = {
            "epoch": e.epoch,
            "name": Path(e.path).name,
            "sha": e.sha256[:12],
            "cached": e.cached,
        }
        row.update({key: figure_of(r, key) for key in figures})
        row["flags"] = sum(1 for la in r.layers if la.flag)
        rows.append(row)
    return rows


def _correlation_rows(result: TrackResult) -> list[dict[str, Any]]:
    return [
        {"measure": m, "label": label, **{t: result.correlation(m, t) for t in TARGETS}}
        for m, label in MEASURES.items()
    ]


def _verdicts(result: TrackResult) -> list[str]:
    """One plain sentence per gap: does WCI rank the checkpoints like the gap, and
    better than either ablation? Stated with the n it rests on."""
    out = []
    sd = tau_null_sd(len(result.entries))
    for t in TARGETS:
        w = result.correlation("wci", t)
        if w is None or w.kendall_tau is None:
            continue
        others = []
        for m in ("sum_frob_sq", "sum_trace"):
            c = result.correlation(m, t)
            if c is not None and c.kendall_tau is not None:
                rel = (
                    "above"
                    if w.kendall_tau > c.kendall_tau
                    else ("below" if w.kendall_tau < c.kendall_tau else "equal to")
                )
                others.append(f"{rel} {MEASURES[m]} ({c.kendall_tau:+.2f})")
        text = (
            f"WCI vs {t}: Kendall tau {w.kendall_tau:+.2f}, Spearman rho "
            f"{fmt_signed(w.spearman_rho, 2)} over n = {w.n} checkpoints"
        )
        if others:
            text += "; WCI's tau is " + " and ".join(others)
        if sd is not None:
            text += (
                f". With no association tau would scatter with SD {sd:.2f} at this n, "
                "so smaller differences are noise."
            )
        out.append(text)
    return out


def _settings_rows(result: TrackResult) -> list[tuple[str, str]]:
    s = result.settings
    cfg = s.get("config", {})
    arch = s.get("arch") or {}
    return [
        ("data", str((s.get("data") or {}).get("spec") or "the dataset each checkpoint names")),
        ("arch", _arch_text(result, arch)),
        (
            "attack",
            f"{cfg.get('attack')} {threat_text(result)}, "
            f"K={cfg.get('steps')}, alpha={fmt_num(cfg.get('step_size'))}, "
            f"restarts={cfg.get('restarts')}",
        ),
        (
            "samples",
            f"train {cfg.get('train_samples') or 'all'}, "
            f"test {cfg.get('test_samples') or 'all'}, Hessian {_hessian_text(result, cfg)}",
        ),
        (
            "curvature",
            f"{cfg.get('curvature')}, tol {cfg.get('tol')}, max probes {cfg.get('max_probes')}",
        ),
        ("seed / device", f"{cfg.get('seed')} / {cfg.get('device')} {cfg.get('dtype')}"),
        ("epoch axis", result.epoch_source),
        (
            "cache",
            f"{result.cache_dir or 'off'} ({result.scanned} scanned now, "
            f"{len(result.entries) - result.scanned} from the cache)",
        ),
    ]


def threat_text(result: TrackResult) -> str:
    """``linf eps=0.1``, saying where each part came from when the checkpoints decided it
    (their metadata, or the default where they say nothing): the values the scans used."""
    cfg = result.settings.get("config", {})
    parts = []
    for key in ("norm", "eps"):
        if cfg.get(key) is not None:
            value = format_eps(cfg[key]) if key == "eps" else str(cfg[key])
            parts.append(value if key == "norm" else f"eps={value}")
            continue
        used = sorted(
            {
                (
                    e.result.config.get("eps_text" if key == "eps" else "norm"),
                    e.result.config.get("threat_model_source", {}).get(key, "?"),
                )
                for e in result.entries
            },
            key=str,
        )
        text = ", ".join(f"{v} ({src})" for v, src in used) or "from each checkpoint"
        parts.append(text if key == "norm" else f"eps={text}")
    return " ".join(parts)


def _arch_text(result: TrackResult, arch: dict[str, Any]) -> str:
    """The architecture as the scans recorded it (``digits_cnn.py:DigitsCNN``, a timm
    name); the settings keep a models.py file by its hash only."""
    if arch.get("spec"):
        return str(arch["spec"])
    used = list(
        dict.fromkeys(e.result.checkpoint.arch for e in result.entries if e.result.checkpoint.arch)
    )
    if used:
        return ", ".join(used) + ("" if arch else " (from the checkpoints)")
    return str(arch.get("class") or ("a models.py file" if arch else "from the checkpoints"))


def _hessian_text(result: TrackResult, cfg: dict[str, Any]) -> str:
    """The examples the Hessian was taken over, as the scans used them (the setting is
    a cap: a smaller train split uses all of it)."""
    used = sorted({e.result.dataset.hessian_samples for e in result.entries} - {None})
    asked = cfg.get("hessian_samples")
    if not used:
        return str(asked)
    text = str(used[0]) if len(used) == 1 else f"{used[0]}-{used[-1]}"
    return text if asked is None or [asked] == used else f"{text} (at most {asked} asked)"


# -- the curves ----------------------------------------------------------------------------
_MARGIN = {"l": 60, "r": 60, "t": 50, "b": 50}
#: the width plotly's vertical toolbar takes at a chart's right edge: a chart with
#: labels on its right (a second axis, a colour bar) keeps this much clear of them
_TOOLBAR = 34


class _Curves:
    """Builds the run's curves: one x axis (epochs), the markers on every chart."""

    def __init__(self, result: TrackResult, series: dict[str, list[Any]], markers: dict[str, Any]):
        self.x = series["epoch"]
        self.hover = [svg_text(n) for n in series["checkpoint"]]
        self.epoch_source = result.epoch_source
        self.shapes, self.notes = [], []
        for key, label, colour in _MARKERS:
            m = markers.get(key)
            if m is None:
                continue
            self.shapes.append(
                {
                    "type": "line",
                    "xref": "x",
                    "yref": "paper",
                    "x0": m["epoch"],
                    "x1": m["epoch"],
                    "y0": 0,
                    "y1": 1,
                    "line": {"color": colour, "dash": "dot", "width": 2},
                }
            )
            same = next((n for n in self.notes if n["x"] == m["epoch"]), None)
            if same is not None:  # both markers at one epoch: one label, not two on top
                same["text"] += f", {label}"
                if len(set(self.x)) > 1 and m["epoch"] == max(self.x):
                    same["xanchor"] = "right"  # the longer label stays inside the chart
                continue
            self.notes.append(
                {
                    "xref": "x",
                    "yref": "paper",
                    "x": m["epoch"],
                    "y": 1.0,
                    "yanchor": "bottom",
                    "text": label,
                    "showarrow": False,
                    "font": {"color": colour, "size": 11},
                }
            )

    def layout(self, title: str, ytitle: str, **extra: Any) -> dict[str, Any]:
        layout = base_layout(
            title={"text": title, "font": {"size": 14}},
            xaxis=axis(title={"text": f"epoch ({self.epoch_source})"}, zeroline=False),
            yaxis=axis(title={"text": ytitle}, zeroline=False),
            margin=_MARGIN,
            # the legend at the foot of the figure, below the axis title whatever the
            # chart's height (a paper-relative place lands on the title)
            legend={
                "orientation": "h",
                "x": 0,
                "xanchor": "left",
                "yref": "container",
                "y": 0,
                "yanchor": "bottom",
            },
            shapes=self.shapes,
            annotations=self.notes,
            hovermode="x unified",
        )
        layout.update(extra)
        return layout

    def line(
        self, name: str, y: list[Any], colour: str, se: list[Any] | None = None, **extra: Any
    ) -> dict[str, Any]:
        trace = {
            "type": "scatter",
            "mode": "lines+markers",
            "name": name,
            "x": self.x,
            "y": y,
            "text": self.hover,
            "line": {"color": colour},
            "marker": {"color": colour},
        }
        if se is not None and any(v for v in se if v is not None):
            trace["error_y"] = {"type": "data", "array": [v or 0 for v in se], "visible": True}
        trace.update(extra)
        return trace

    def dashed(self, name: str, y: list[Any], colour: str) -> dict[str, Any]:
        return self.line(name, y, colour, line={"color": colour, "dash": "dash"})


def _figures(
    result: TrackResult, s: dict[str, list[Any]], markers: dict[str, Any]
) -> dict[str, Any]:
    """Every chart of the page, keyed by the id of its ``<div>``."""
    c = _Curves(result, s, markers)
    blue, orange, green, red, pink = PALETTE[0], PALETTE[1], PALETTE[2], PALETTE[3], PALETTE[4]
    # gap_err is a difference of accuracies: whole percentage points, a few round ticks
    # (its own round ticks, not ticks synced to gap_loss's grid, which land on values
    # like 9% and 16%; no grid of its own, which would cross gap_loss's)
    gap_err_axis = axis(
        title={"text": "gap_err"},
        overlaying="y",
        side="right",
        zeroline=False,
        tickformat=".0%",
        tickmode="auto",
        nticks=6,
        showgrid=False,
    )
    figs: dict[str, Any] = {
        "fig-wci": {
            "data": [c.line("WCI ± SE", s["wci"], blue, s["wci_se"])],
            "layout": c.layout("Weight-Curvature Index", "WCI"),
        },
        "fig-gap": {
            "data": [
                c.line("gap_loss = L_adv(T) - L_adv(S)", s["gap_loss"], red, s["gap_loss_se"]),
                c.line(
                    "gap_err = acc_adv(S) - acc_adv(T)",
                    s["gap_err"],
                    orange,
                    s["gap_err_se"],
                    yaxis="y2",
                ),
            ],
            "layout": c.layout(
                "Robust generalization gap",
                "gap_loss",
                yaxis2=gap_err_axis,
                margin={**_MARGIN, "r": _MARGIN["r"] + _TOOLBAR},
            ),
        },
        "fig-acc": {
            "data": [
                c.line("robust train", s["robust_acc_train"], blue),
                c.line("robust test", s["robust_acc_test"], red),
                c.dashed("clean train", s["clean_acc_train"], blue),
                c.dashed("clean test", s["clean_acc_test"], red),
            ],
            "layout": c.layout(
                "Accuracy", "accuracy", yaxis=axis(title={"text": "accuracy"}, tickformat=".0%")
            ),
        },
        "fig-loss": {
            "data": [
                c.line("robust loss train L_adv(S)", s["robust_loss_train"], blue),
                c.line("robust loss test L_adv(T)", s["robust_loss_test"], red),
                c.line("PAC-Bayes bound (2nd order, c*)", s["bound"], green),
            ],
            "layout": c.layout("Robust loss and the bound", "cross-entropy"),
        },
        "fig-ablation": {
            "data": [
                c.line("WCI", _scaled(s["wci"]), blue),
                c.line("sum ||W||_F^2", _scaled(s["sum_frob_sq"]), orange),
                c.line("sum Tr(H)", _scaled(s["sum_trace"]), green),
                c.dashed("gap_loss", _scaled(s["gap_loss"]), red),
                c.dashed("gap_err", _scaled(s["gap_err"]), pink),
            ],
            "layout": c.layout(
                "WCI, its ablations and the gaps, each scaled to [0, 1]", "scaled (min 0, max 1)"
            ),
        },
    }
    figs["fig-layers"] = _layers_figure(result, c)
    return figs


def _layers_figure(result: TrackResult, c: _Curves) -> dict[str, Any]:
    """The heatmap of the per-layer WCI terms, one row a layer, one column an epoch."""
    names, rows = result.layer_terms()
    return {
        "data": [
            {
                "type": "heatmap",
                "x": c.x,
                "y": [svg_text(n) for n in names],
                "z": rows,
                "colorscale": "Viridis",
                "colorbar": {"title": {"text": "||W||·sqrt(Tr H)", "side": "right"}},
                "hovertemplate": "epoch %{x}<br>%{y}<br>term %{z:.4g}<extra></extra>",
            }
        ],
        "layout": c.layout(
            "Per-layer WCI terms ||W_k||_F sqrt(Tr H_k)",
            "layer",
            yaxis=axis(autorange="reversed"),
            hovermode="closest",
            height=max(320, 60 + 28 * len(names)),
            margin={**_MARGIN, "r": _MARGIN["r"] + 60 + _TOOLBAR},
        ),
    }


def _scaled(values: list[Any]) -> list[float | None]:
    """Min-max scaling to [0, 1] (0.5 for a constant series), None kept."""
    known = [v for v in values if v is not None and math.isfinite(v)]
    if not known:
        return [None] * len(values)
    lo, hi = min(known), max(known)
    span = hi - lo
    return [None if v is None else (0.5 if span == 0 else (v - lo) / span) for v in values]
