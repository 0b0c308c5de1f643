"""Plotly figures of the pages, as plain {data, layout} dicts the page script draws.

One palette (Okabe-Ito, safe for the common colour-vision deficiencies), one base
layout and one axis style for every chart of every page.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..bounds import pac_bayes_bound
from ..formatting import shorten, svg_text
from ..result import AuditResult, LayerResult

__all__ = [
    "AXIS_NAME_CHARS",
    "FLAG_COLOUR",
    "PALETTE",
    "axis",
    "base_layout",
    "bound_figure",
    "comparison_terms_figure",
    "convergence_figure",
    "figure_dict",
    "layer_axis",
    "layer_rows_height",
    "layers_figure",
]

#: Okabe-Ito, safe for the common colour-vision deficiencies
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
FLAG_COLOUR = "#D55E00"


def base_layout(**extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "template": None,
        "font": {
            "family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif",
            "size": 12,
            "color": "#222",
        },
        "paper_bgcolor": "#fff",
        "plot_bgcolor": "#fff",
        "margin": {"l": 60, "r": 44, "t": 60, "b": 50},
        "hovermode": "closest",
        # a vertical toolbar down the right edge stays clear of the chart's title
        "modebar": {"orientation": "v"},
        "legend": {"orientation": "h", "x": 0, "y": 1.02, "xanchor": "left", "yanchor": "bottom"},
    }
    layout.update(extra)
    return layout


def axis(**extra: Any) -> dict[str, Any]:
    axis = {
        "gridcolor": "#e5e5e5",
        "zerolinecolor": "#999",
        "linecolor": "#999",
        "automargin": True,
    }
    axis.update(extra)
    return axis


def figure_dict(fig: Any, names: list[str] | None = None) -> dict[str, Any]:
    """A go.Figure as the compact {data, layout} dict Plotly.newPlot takes.

    Floats keep 6 significant digits (the page shows 4). Layer names, when given, are
    stored once under ``names``; report.js hands them as ``customdata`` to every trace
    whose ``meta`` is ``"names"`` (a 200-layer model would otherwise carry them 3 times).
    """
    d = json.loads(fig.to_json())
    d.get("layout", {}).pop("template", None)
    out: dict[str, Any] = {"data": _round(d.get("data", [])), "layout": _round(d.get("layout", {}))}
    if names is not None:
        out["names"] = names
    return out


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.6g}") if math.isfinite(obj) else None
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    return obj


#: characters of a layer name shown on a chart's axis (the hover and the table keep it whole)
AXIS_NAME_CHARS = 44


def layer_rows_height(n: int) -> int:
    """Height in px of a chart with one horizontal row per layer: every name readable
    (plotly's 12 px font needs about 15 px a row), plus room for titles and the axis."""
    return 150 + n * (22 if n <= 40 else 15)


def layer_axis(names: list[str], **extra: Any) -> dict[str, Any]:
    """A y axis that names every layer (model order from the top), so a printed page or a
    screenshot says which bar is which; a long name keeps its end (``…blocks.3.fc2``)."""
    return axis(
        tickmode="array",
        tickvals=list(range(len(names))),
        ticktext=[svg_text(shorten(n, AXIS_NAME_CHARS, keep="end")) for n in names],
        range=[len(names) - 0.5, -0.5],
        zeroline=False,
        showgrid=False,
        **extra,
    )


def layers_figure(result: AuditResult) -> dict[str, Any]:
    """Weight norm, trace ± SE and WCI term per layer: three panels side by side, one
    horizontal row per layer named on the shared y axis, model order from the top."""
    from plotly.subplots import make_subplots

    layers = result.layers
    flagged = any(la.flag for la in layers)
    fig = make_subplots(
        rows=1,
        cols=3,
        shared_yaxes=True,
        horizontal_spacing=0.03,
        subplot_titles=("‖W‖<sub>F</sub>", "Tr(H) ± SE", "WCI term"),
    )
    for col, trace in _layer_traces(layers):
        fig.add_trace(trace, row=1, col=col)
    fig.update_layout(
        **base_layout(height=layer_rows_height(len(layers)), bargap=0.15, showlegend=flagged)
    )
    # the legend key sits above the panel titles, clear of them and of the toolbar
    height, top, bottom = layer_rows_height(len(layers)), 90 if flagged else 50, 40
    fig.update_layout(
        legend={"x": 0, "xanchor": "left", "y": 1 + 30 / (height - top - bottom)},
        margin={"l": 10, "r": 44, "t": top, "b": bottom},
    )
    for col in (1, 2, 3):
        fig.update_xaxes(
            axis(zeroline=col == 2, rangemode="tozero" if col != 2 else "normal"), row=1, col=col
        )
    fig.update_yaxes(layer_axis([la.name for la in layers]), row=1, col=1)
    for col in (2, 3):  # no zero line: y = 0 is the first layer's row
        fig.update_yaxes(
            range=[len(layers) - 0.5, -0.5], showgrid=False, zeroline=False, row=1, col=col
        )
    return figure_dict(fig, [svg_text(la.name) for la in layers])


def _layer_traces(layers: list[LayerResult]) -> list[tuple[int, Any]]:
    """(subplot column, trace) of :func:`layers_figure`; hover names come from ``customdata``."""
    from plotly import graph_objects as go

    y = list(range(len(layers)))
    colours = [FLAG_COLOUR if la.flag else PALETTE[0] for la in layers]
    hover = "%{customdata}<br>%{x:.4g}<extra></extra>"
    common = {"y": y, "meta": "names", "showlegend": False}
    traces = [
        (
            1,
            go.Bar(
                x=[la.frob_norm for la in layers],
                orientation="h",
                marker_color=PALETTE[5],
                hovertemplate=hover,
                name="‖W‖F",
                **common,
            ),
        ),
        (
            2,
            go.Scatter(
                x=[la.trace for la in layers],
                mode="markers",
                marker={
                    "color": colours,
                    "size": 6,
                    "symbol": ["x" if la.flag else "circle" for la in layers],
                },
                error_x={
                    "type": "data",
                    "array": [la.trace_se or 0.0 for la in layers],
                    "visible": True,
                    "color": "#555",
                    "thickness": 1,
                },
                hovertemplate="%{customdata}<br>Tr(H) %{x:.4g}<extra></extra>",
                name="Tr(H)",
                **common,
            ),
        ),
        (
            3,
            go.Bar(
                x=[la.wci_term for la in layers],
                orientation="h",
                marker_color=colours,
                hovertemplate=hover,
                name="WCI term",
                **common,
            ),
        ),
    ]
    if any(la.flag for la in layers):
        # legend key only: the flagged layers are drawn in vermillion, traces as crosses
        key = go.Scatter(
            x=[None],
            y=[None],
            mode="markers",
            name="flagged layer",
            marker={"color": FLAG_COLOUR, "symbol": "x", "size": 8},
        )
        traces.append((2, key))
    return traces


def bound_figure(result: AuditResult) -> dict[str, Any] | None:
    """bound(c) on a log grid around c*, with its three parts and c* marked."""
    pb, wci = result.pac_bayes, result.wci
    if pb.c is None or pb.l_adv is None or not pb.m or pb.delta is None:
        return None
    if wci is None or wci <= 0 or pb.c <= 0:
        return None
    from plotly import graph_objects as go

    c_star = pb.c
    grid = [c_star * 10 ** (k / 20) for k in range(-40, 41)]
    try:
        bound = [pac_bayes_bound(c, pb.l_adv, wci, pb.m, pb.delta) for c in grid]
        conf = math.log(2.0 * math.sqrt(pb.m) / pb.delta)
    except ValueError:
        return None
    curvature = [0.5 * c * wci for c in grid]
    complexity = [math.sqrt((wci / (2 * c) + conf) / (2 * pb.m)) for c in grid]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=grid, y=bound, name="bound(c)", line={"color": PALETTE[0], "width": 3})
    )
    fig.add_trace(
        go.Scatter(
            x=grid, y=curvature, name="(c/2)·WCI", line={"color": PALETTE[1], "dash": "dash"}
        )
    )
    fig.add_trace(
        go.Scatter(
            x=grid,
            y=complexity,
            name="√((KL + conf)/2m)",
            line={"color": PALETTE[2], "dash": "dot"},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[grid[0], grid[-1]],
            y=[pb.l_adv, pb.l_adv],
            name="L_adv(S)",
            mode="lines",
            line={"color": "#777", "dash": "longdash"},
        )
    )
    star = pac_bayes_bound(c_star, pb.l_adv, wci, pb.m, pb.delta)
    fig.add_trace(
        go.Scatter(
            x=[c_star],
            y=[star],
            mode="markers+text",
            name="c*",
            marker={"color": PALETTE[3], "size": 11, "symbol": "diamond"},
            text=[f"c* = {c_star:.3g}"],
            textposition="top center",
        )
    )
    lo = min(min(curvature), min(complexity), pb.l_adv)
    hi = max(star * 2.5, pb.l_adv * 1.2, lo + 1e-12)
    fig.update_layout(**base_layout(height=380))
    fig.update_xaxes(axis(type="log", title_text="c (prior/posterior variance scale)"))
    fig.update_yaxes(axis(title_text="value", range=[min(0.0, lo), hi]))
    return figure_dict(fig)


def convergence_figure(layers: list[LayerResult]) -> dict[str, Any]:
    """Running Hutchinson mean ± SE against probes, one small panel per layer."""
    from plotly import graph_objects as go
    from plotly.subplots import make_subplots

    cols = 2 if len(layers) > 1 else 1
    rows = math.ceil(len(layers) / cols)
    titles = [svg_text(shorten(la.name, 48, keep="end")) for la in layers]
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=titles,
        horizontal_spacing=0.12,
        vertical_spacing=0.18 if rows > 1 else 0.1,
    )
    for i, la in enumerate(layers):
        r, c = i // cols + 1, i % cols + 1
        pts = [h for h in la.history if len(h) >= 3 and h[1] is not None]
        probes = [h[0] for h in pts]
        mean = [h[1] for h in pts]
        se = [h[2] or 0.0 for h in pts]
        upper = [m + s for m, s in zip(mean, se, strict=True)]
        lower = [m - s for m, s in zip(mean, se, strict=True)]
        first = i == 0
        fig.add_trace(
            go.Scatter(
                x=probes + probes[::-1],
                y=upper + lower[::-1],
                fill="toself",
                mode="lines",
                fillcolor="rgba(86,180,233,0.3)",
                line={"width": 0},
                hoverinfo="skip",
                name="± 1 SE",
                showlegend=first,
                legendgroup="se",
            ),
            row=r,
            col=c,
        )
        fig.add_trace(
            go.Scatter(
                x=probes,
                y=mean,
                mode="lines+markers",
                name="running mean",
                line={"color": PALETTE[0]},
                marker={"size": 4},
                showlegend=first,
                legendgroup="mean",
            ),
            row=r,
            col=c,
        )
    fig.update_layout(**base_layout(height=260 * rows + 80))
    fig.update_layout(legend={"y": 1.0 + 40 / (260 * rows)})
    fig.update_xaxes(axis(title_text="probes"))
    fig.update_yaxes(axis())
    return figure_dict(fig)


def comparison_terms_figure(
    names: list[str], order: list[str], terms: list[dict[str, float | None]]
) -> dict[str, Any]:
    """Per-layer WCI terms of several results as grouped horizontal bars, one row per
    layer named on the y axis, layers in ``order`` from the top.

    Args:
        names: one display name per result.
        order: layer names, the y axis.
        terms: per result, layer name -> WCI term (a missing layer leaves a gap).
    """
    from plotly import graph_objects as go

    fig = go.Figure()
    for i, (name, by_layer) in enumerate(zip(names, terms, strict=True)):
        fig.add_trace(
            go.Bar(
                y=list(range(len(order))),
                x=[by_layer.get(n) for n in order],
                orientation="h",
                meta="names",
                name=svg_text(f"{i + 1}: {name}"),
                marker_color=PALETTE[i % len(PALETTE)],
                opacity=0.85,
                hovertemplate="%{customdata}<br>WCI term %{x:.4g}<extra>"
                + svg_text(name[:40])
                + "</extra>",
            )
        )
    rows = len(order) * (len(names) + 1) // 2  # a row per layer and bar pair
    fig.update_layout(**base_layout(height=layer_rows_height(rows), barmode="group", bargap=0.2))
    fig.update_yaxes(layer_axis(order, title_text="layer (order of the first result)"))
    fig.update_xaxes(axis(title_text="WCI term", rangemode="tozero"))
    return figure_dict(fig, [svg_text(n) for n in order])
