"""Result(s) -> one self-contained HTML report (jinja2 + plotly, no network).

The page carries plotly.js inline once, the figures as one JSON blob, CSS and a few
lines of vanilla JS for the layer table; it makes no request when opened. Every
string that comes from the checkpoint, its metadata, a file name or the user goes
through jinja2's autoescaping, and the figure JSON escapes ``<``, ``>`` and ``&`` so
that a ``</script>`` inside a layer name stays text.

Example:
    >>> from wciaudit.result import AuditResult
    >>> html = render_report([AuditResult()])
    >>> html.startswith("<!DOCTYPE html>")
    True
"""

from __future__ import annotations

import html as _html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from .bounds import pac_bayes_bound
from .config import format_eps
from .errors import ConfigError
from .result import AuditResult, LayerResult, write_atomic

__all__ = ["render_report", "write_report"]

#: Okabe-Ito, safe for the common colour-vision deficiencies
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
FLAG_COLOUR = "#D55E00"
#: hutchinson layers whose convergence is drawn (largest WCI terms first)
CONVERGENCE_LAYERS = 4
#: metadata values longer than this are cut in the header (the JSON keeps them whole)
MAX_META_CHARS = 300

_TEMPLATE = "report.html.j2"


# -- public API ----------------------------------------------------------------------------
def render_report(results: Sequence[AuditResult]) -> str:
    """Render one or more audit results as a self-contained HTML page.

    Args:
        results: one result (the single report) or several (adds a comparison view,
            the first result being the reference the differences are taken against).

    Returns:
        The HTML text, plotly.js inlined once.

    Raises:
        ConfigError: if ``results`` is empty.
    """
    results = list(results)
    if not results:
        raise ConfigError("the report needs at least one result")

    sections = [_section(i, r) for i, r in enumerate(results)]
    figures: dict[str, Any] = {}
    for s in sections:
        figures.update(s.pop("figures"))
    comparison = _comparison(results, sections) if len(results) > 1 else None
    if comparison is not None:
        figures.update(comparison.pop("figures"))
    env = template_environment()
    return env.get_template(_TEMPLATE).render(
        title=_page_title(results),
        sections=sections,
        comparison=comparison,
        figures_json=script_json(figures),
        plotly_js=inline_plotly(),
        tool_version=results[0].tool_version,
    )


def write_report(results: Sequence[AuditResult], path: str | os.PathLike[str]) -> Path:
    """Render ``results`` and write the page atomically to ``path``.

    A failing render leaves no file behind and an existing file untouched.
    """
    text = render_report(results)
    return write_atomic(path, text)


# -- templates -----------------------------------------------------------------------------
def _load_template(name: str) -> tuple[str, str, Any] | None:
    """Installed wheel first (``wciaudit/templates``), then the repo's ``templates/``."""
    try:
        packaged = resources.files("wciaudit").joinpath("templates", name)
        if packaged.is_file():
            return packaged.read_text(encoding="utf-8"), f"wciaudit/templates/{name}", lambda: True
    except (FileNotFoundError, ModuleNotFoundError, NotADirectoryError):
        pass
    repo = Path(__file__).resolve().parent.parent / "templates" / name
    if repo.is_file():
        return repo.read_text(encoding="utf-8"), str(repo), lambda: True
    return None


def template_environment() -> jinja2.Environment:
    """The jinja2 environment of every wciaudit page: the packaged templates, autoescape
    on, and the number filters (``num``, ``pm``, ``pct``, ``secs``, ``int``, ``key``)."""
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt_num
    env.filters["pm"] = fmt_pm
    env.filters["pct"] = fmt_pct
    env.filters["secs"] = fmt_secs
    env.filters["int"] = fmt_int
    env.filters["key"] = sort_key
    return env


# -- number formatting ---------------------------------------------------------------------
def fmt_num(value: Any, digits: int = 4) -> str:
    """``digits`` significant digits, ``–`` for a figure that could not be measured."""
    if _missing(value) or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0:
        return "0"
    if 1e-4 <= abs(value) < 1e6:
        return f"{value:.{digits}g}"
    return f"{value:.{digits - 1}e}"


def fmt_pm(value: Any, se: Any, digits: int = 4) -> str:
    """``value ± se``: the SE to two significant digits, the value to the same decimal."""
    if _missing(value):
        return "–"
    if _missing(se) or not isinstance(se, (int, float)) or not math.isfinite(se) or se <= 0:
        return fmt_num(value, digits)
    decimals = max(0, 1 - math.floor(math.log10(se)))
    if decimals <= 8 and (value == 0 or 1e-4 <= abs(value) < 1e6):
        return f"{value:.{decimals}f} ± {se:.{decimals}f}"
    return f"{fmt_num(value, digits)} ± {se:.2g}"


def fmt_pct(value: Any, se: Any = None) -> str:
    """An accuracy in [0, 1] as a percentage, with its SE in percentage points."""
    if _missing(value):
        return "–"
    if _missing(se) or se <= 0:
        return f"{100 * value:.1f}%"
    decimals = max(1, 1 - math.floor(math.log10(100 * se)))
    return f"{100 * value:.{decimals}f}% ± {100 * se:.{decimals}f}"


def fmt_secs(value: Any) -> str:
    if _missing(value):
        return "–"
    if value < 60:
        return f"{value:.2g} s" if value < 10 else f"{value:.0f} s"
    minutes, seconds = divmod(value, 60)
    return f"{int(minutes)} min {seconds:.0f} s"


def fmt_int(value: Any) -> str:
    return "–" if _missing(value) else f"{int(value):,}"


def sort_key(value: Any) -> str:
    """The table's ``data-v`` sort key: 6 significant digits, empty when missing."""
    if _missing(value) or isinstance(value, str):
        return ""
    return f"{value:.6g}"


def _missing(value: Any) -> bool:
    return value is None or isinstance(value, jinja2.Undefined)


# -- JSON for <script> ---------------------------------------------------------------------
_SCRIPT_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def script_json(data: Any) -> Markup:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>``, ``&``."""
    text = json.dumps(data, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in _SCRIPT_ESCAPES.items():
        text = text.replace(char, escaped)
    return Markup(text)


def inline_plotly() -> Markup:
    """plotly.js for an inline ``<script>``, once per page (no network request)."""
    import plotly.offline

    # plotly.js holds no "</script" today; guard anyway so an upgrade cannot end our tag
    js = plotly.offline.get_plotlyjs()
    return Markup(js.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT"))


def svg_text(text: str) -> str:
    """Plotly draws labels as pseudo-HTML (``<b>``, ``<a href>``): hand it entities."""
    return _html.escape(str(text), quote=False)


# -- one result ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _LayerRow:
    index: int
    name: str
    shape: str
    numel: int
    frob_norm: float
    trace: float | None
    trace_se: float | None
    probes: str
    method: str
    wci_term: float | None
    wci_term_se: float | None
    share: float | None
    flag: str | None
    stop_reason: str | None


def _page_title(results: list[AuditResult]) -> str:
    names = [_file_name(r) for r in results]
    if len(names) == 1:
        return f"wciaudit report: {names[0]}"
    return "wciaudit comparison: " + " vs ".join(names)


def _file_name(result: AuditResult) -> str:
    path = result.checkpoint.path or "(unnamed checkpoint)"
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or path


def _section(index: int, result: AuditResult) -> dict[str, Any]:
    """Everything the template shows for one result, plus its figures (by div id)."""
    prefix = f"r{index}"
    cfg = result.config or {}
    wci = result.wci
    rows = [_layer_row(i, la, wci) for i, la in enumerate(result.layers)]
    flagged = [r for r in rows if r.flag]
    figures: dict[str, Any] = {}
    if result.layers:
        figures[f"{prefix}-layers"] = _layers_figure(result)
    bound_curve = _bound_figure(result)
    if bound_curve is not None:
        figures[f"{prefix}-bound"] = bound_curve
    hutch = [la for la in result.layers if la.history]
    hutch.sort(key=lambda la: -(la.wci_term or 0.0))
    top = hutch[:CONVERGENCE_LAYERS]
    if top:
        figures[f"{prefix}-conv"] = _convergence_figure(top)
    exact = [la.name for la in result.layers if not la.history and la.trace is not None]
    eps = cfg.get("eps")
    metadata = [
        (str(k), _cut(str(v)))
        for k, v in sorted((result.checkpoint.metadata or {}).items(), key=lambda kv: str(kv[0]))
    ]
    return {
        "index": index,
        "id": prefix,
        "colour": PALETTE[index % len(PALETTE)],
        "name": _file_name(result),
        "r": result,
        "cfg": cfg,
        "eps_text": format_eps(float(eps)) if isinstance(eps, (int, float)) else "–",
        "metadata": metadata,
        "rows": rows,
        "flagged": flagged,
        "top_layers": [la.name for la in top],
        "hutchinson_count": len(hutch),
        "exact_layers": exact,
        "checks": [_check_row(c) for c in result.gate.checks],
        "sqrt_term": _sqrt_term(result),
        "timings": _timings(result),
        "has_layers": f"{prefix}-layers" in figures,
        "has_bound": f"{prefix}-bound" in figures,
        "has_conv": f"{prefix}-conv" in figures,
        "figures": figures,
    }


def _cut(text: str) -> str:
    return text if len(text) <= MAX_META_CHARS else text[: MAX_META_CHARS - 1] + "…"


def _layer_row(index: int, la: LayerResult, wci: float | None) -> _LayerRow:
    share = None
    if la.wci_term is not None and wci:
        share = la.wci_term / wci
    return _LayerRow(
        index=index,
        name=la.name,
        shape="×".join(str(s) for s in la.shape),
        numel=int(la.numel),
        frob_norm=la.frob_norm,
        trace=la.trace,
        trace_se=la.trace_se,
        probes=str(la.probes),
        method=la.method,
        wci_term=la.wci_term,
        wci_term_se=la.wci_term_se,
        share=share,
        flag=la.flag,
        stop_reason=la.stop_reason,
    )


def _check_row(check: dict[str, Any]) -> dict[str, str]:
    """One gate check (wciaudit.gate's keys: figure, op, option, threshold, value, se,
    status, message, ...); unknown shapes still show what they carry."""
    name = check.get("option") or check.get("figure") or check.get("name") or "check"
    status = check.get("status")
    if status is None and "passed" in check:
        status = "pass" if check["passed"] else "fail"
    threshold = check.get("threshold_text") or check.get("threshold")
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        threshold = fmt_num(threshold)
    rule = f"{check.get('op', '')} {threshold}".strip() if threshold is not None else ""
    value = check.get("value")
    se = check.get("se")
    shown = (
        fmt_pm(value, se)
        if isinstance(value, (int, float))
        else ("" if value is None else str(value))
    )
    detail = str(check.get("message") or "")
    warnings = check.get("warnings") or []
    if isinstance(warnings, list) and warnings:
        detail = "; ".join([detail, *map(str, warnings)]).strip("; ")
    return {
        "name": str(name),
        "figure": str(check.get("figure") or ""),
        "rule": rule,
        "value": shown,
        "status": str(status or "?"),
        "failed": status == "fail",
        "detail": detail,
    }


def _sqrt_term(result: AuditResult) -> float | None:
    pb = result.pac_bayes
    if pb.kl_term is None or pb.confidence_term is None or not pb.m:
        return None
    return math.sqrt((pb.kl_term + pb.confidence_term) / (2.0 * pb.m))


def _timings(result: AuditResult) -> list[tuple[str, float]]:
    t = result.timings
    stages = [
        ("load", t.load_s),
        ("data", t.data_s),
        ("attack", t.attack_s),
        ("evaluation", t.eval_s),
        ("curvature", t.trace_s),
        ("total", t.total_s),
    ]
    return [(name, value) for name, value in stages if value or name == "total"]


# -- figures (plotly graph_objects -> plain JSON dicts) -------------------------------------
def _base_layout(**extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "template": None,
        "font": {
            "family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif",
            "size": 12,
            "color": "#222",
        },
        "paper_bgcolor": "#fff",
        "plot_bgcolor": "#fff",
        "margin": {"l": 60, "r": 20, "t": 60, "b": 50},
        "hovermode": "closest",
        "legend": {"orientation": "h", "x": 0, "y": 1.02, "xanchor": "left", "yanchor": "bottom"},
    }
    layout.update(extra)
    return layout


def _axis(**extra: Any) -> dict[str, Any]:
    axis = {
        "gridcolor": "#e5e5e5",
        "zerolinecolor": "#999",
        "linecolor": "#999",
        "automargin": True,
    }
    axis.update(extra)
    return axis


def _figure_dict(fig: Any, names: list[str] | None = None) -> dict[str, Any]:
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


def _layers_figure(result: AuditResult) -> dict[str, Any]:
    """Weight norm, trace ± SE and WCI term per layer, in model order, flags marked."""
    from plotly import graph_objects as go
    from plotly.subplots import make_subplots

    layers = result.layers
    x = list(range(len(layers)))
    names = [svg_text(la.name) for la in layers]
    colours = [FLAG_COLOUR if la.flag else PALETTE[0] for la in layers]
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=("‖W‖<sub>F</sub>", "Tr(H) ± SE", "WCI term ‖W‖<sub>F</sub>·√max(Tr H, 0)"),
    )
    hover = "%{customdata}<br>%{y:.4g}<extra></extra>"
    fig.add_trace(
        go.Bar(
            x=x,
            y=[la.frob_norm for la in layers],
            meta="names",
            marker_color=PALETTE[5],
            hovertemplate=hover,
            name="‖W‖F",
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[la.trace for la in layers],
            meta="names",
            mode="markers",
            marker={
                "color": colours,
                "size": 6,
                "symbol": ["x" if la.flag else "circle" for la in layers],
            },
            error_y={
                "type": "data",
                "array": [la.trace_se or 0.0 for la in layers],
                "visible": True,
                "color": "#555",
                "thickness": 1,
            },
            hovertemplate="%{customdata}<br>Tr(H) %{y:.4g}<extra></extra>",
            name="Tr(H)",
            showlegend=False,
        ),
        row=2,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            x=x,
            y=[la.wci_term for la in layers],
            meta="names",
            marker_color=colours,
            hovertemplate=hover,
            name="WCI term",
            showlegend=False,
        ),
        row=3,
        col=1,
    )
    if any(la.flag for la in layers):
        # legend key only: the flagged layers are drawn in vermillion, traces as crosses
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name="flagged layer",
                marker={"color": FLAG_COLOUR, "symbol": "x", "size": 8},
            ),
            row=2,
            col=1,
        )
    height = 620
    fig.update_layout(
        **_base_layout(height=height, bargap=0.15, showlegend=any(la.flag for la in layers))
    )
    fig.update_layout(legend={"x": 1, "xanchor": "right", "y": 1.06})
    for row in (1, 2, 3):
        fig.update_yaxes(_axis(), row=row, col=1)
        fig.update_xaxes(_axis(showticklabels=row == 3, zeroline=False), row=row, col=1)
    fig.update_xaxes(title_text="layer index (model order; hover for the name)", row=3, col=1)
    return _figure_dict(fig, names)


def _bound_figure(result: AuditResult) -> dict[str, Any] | None:
    """bound(c) on a log grid around c*, with its three parts and c* marked."""
    pb, wci = result.pac_bayes, result.wci
    if pb.c is None or pb.l_adv is None or not pb.m or wci is None or wci <= 0 or pb.c <= 0:
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
    fig.update_layout(**_base_layout(height=380))
    fig.update_xaxes(_axis(type="log", title_text="c (prior/posterior variance scale)"))
    fig.update_yaxes(_axis(title_text="value", range=[min(0.0, lo), hi]))
    return _figure_dict(fig)


def _convergence_figure(layers: list[LayerResult]) -> dict[str, Any]:
    """Running Hutchinson mean ± SE against probes, one small panel per layer."""
    from plotly import graph_objects as go
    from plotly.subplots import make_subplots

    cols = 2 if len(layers) > 1 else 1
    rows = math.ceil(len(layers) / cols)
    titles = [svg_text(_short(la.name)) for la in layers]
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
    fig.update_layout(**_base_layout(height=260 * rows + 80))
    fig.update_layout(legend={"y": 1.0 + 40 / (260 * rows)})
    fig.update_xaxes(_axis(title_text="probes"))
    fig.update_yaxes(_axis())
    return _figure_dict(fig)


def _short(name: str, limit: int = 48) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


# -- several results -----------------------------------------------------------------------
def _comparison(results: list[AuditResult], sections: list[dict[str, Any]]) -> dict[str, Any]:
    """Key figures side by side, per-layer WCI terms overlaid, the largest differences."""
    from plotly import graph_objects as go

    names = [s["name"] for s in sections]
    order: list[str] = []
    seen: set[str] = set()
    for r in results:
        for la in r.layers:
            if la.name not in seen:
                seen.add(la.name)
                order.append(la.name)
    terms = [{la.name: la.wci_term for la in r.layers} for r in results]
    fig = go.Figure()
    for i in range(len(results)):
        fig.add_trace(
            go.Bar(
                x=list(range(len(order))),
                y=[terms[i].get(n) for n in order],
                meta="names",
                name=svg_text(f"{i + 1}: {names[i]}"),
                marker_color=PALETTE[i % len(PALETTE)],
                opacity=0.85,
                hovertemplate="%{customdata}<br>WCI term %{y:.4g}<extra>"
                + svg_text(names[i][:40])
                + "</extra>",
            )
        )
    fig.update_layout(**_base_layout(height=420, barmode="group", bargap=0.1))
    fig.update_xaxes(
        _axis(
            title_text="layer index (order of the first result; hover for the name)", zeroline=False
        )
    )
    fig.update_yaxes(_axis(title_text="WCI term"))

    def metric(r: AuditResult, key: str) -> float | None:
        if key == "wci":
            return r.wci
        if key == "bound":
            return r.pac_bayes.bound
        return getattr(r.metrics, key)

    keys = [
        ("WCI", "wci", True),
        ("PAC-Bayes bound at c*", "bound", True),
        ("robust gap (loss)", "gap_loss", True),
        ("robust gap (error)", "gap_err", True),
        ("robust acc, test", "robust_acc_test", False),
        ("clean acc, test", "clean_acc_test", False),
        ("robust acc, train", "robust_acc_train", False),
        ("clean acc, train", "clean_acc_train", False),
    ]
    summary = []
    for label, key, lower_is_better in keys:
        values = [metric(r, key) for r in results]
        ref = values[0]
        cells = []
        for v in values:
            diff = None if v is None or ref is None else v - ref
            rel = None if diff is None or not ref else diff / abs(ref)
            better = None if diff is None or diff == 0 else (diff < 0) == lower_is_better
            cells.append({"value": v, "diff": diff, "rel": rel, "better": better})
        summary.append(
            {
                "label": label,
                "pct": key.endswith("acc_test") or key.endswith("acc_train") or key == "gap_err",
                "cells": cells,
            }
        )

    diffs = []
    ref_terms = terms[0]
    for n in order:
        values = [t.get(n) for t in terms]
        present = [v for v in values if v is not None]
        spread = max(present) - min(present) if len(present) > 1 else None
        diffs.append(
            {
                "name": n,
                "terms": values,
                "spread": spread,
                "missing": any(n not in t for t in terms),
                "ref": ref_terms.get(n),
            }
        )
    diffs.sort(key=lambda d: -(d["spread"] or 0.0))
    return {
        "names": names,
        "colours": [s["colour"] for s in sections],
        "summary": summary,
        "diffs": diffs[:15],
        "n_layers": len(order),
        "missing": [d["name"] for d in diffs if d["missing"]],
        "figures": {"cmp-terms": _figure_dict(fig, [svg_text(n) for n in order])},
    }
