"""Result(s) -> one self-contained HTML report: one result, or several compared.

The page carries plotly.js inline once, the figures as one JSON blob, CSS and a few
lines of vanilla JS for the layer table; it makes no request when opened.

Example:
    >>> from wciaudit.result import AuditResult
    >>> html = render_report([AuditResult()])
    >>> html.startswith("<!DOCTYPE html>")
    True
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..formatting import format_eps, shorten
from ..gate import GateCheck
from ..result import AuditResult, LayerResult, PacBayes, write_atomic
from ..sentences import (
    most_layers_nonpositive,
    normalisation_text,
    se_covers_words,
    se_sentence,
    wci_layers_sentence,
)
from ..track.result import figure_of
from .charts import (
    PALETTE,
    bound_figure,
    comparison_terms_figure,
    convergence_figure,
    layers_figure,
)
from .html import render_page

__all__ = ["render_report", "write_report"]

#: hutchinson layers whose convergence is drawn (largest WCI terms first)
CONVERGENCE_LAYERS = 4
#: metadata values longer than this are cut in the header (the JSON keeps them whole)
MAX_META_CHARS = 300
#: rows of the "layers that differ most" table
MAX_DIFF_ROWS = 15
#: a difference of two results is coloured when beyond this many SEs of the difference
NOISE_SIGMAS = 2.0
#: (label, figure, lower is better) of the comparison table
COMPARED = (
    ("WCI", "wci", True),
    ("PAC-Bayes bound at c*", "bound", True),
    ("robust gap (loss)", "gap_loss", True),
    ("robust gap (error)", "gap_err", True),
    ("robust acc, test", "robust_acc_test", False),
    ("clean acc, test", "clean_acc_test", False),
    ("robust acc, train", "robust_acc_train", False),
    ("clean acc, train", "clean_acc_train", False),
)

_TEMPLATE = "report.html.j2"


def render_report(results: Sequence[AuditResult], *, plotly: str = "inline") -> str:
    """Render one or more audit results as one HTML page.

    Args:
        results: one result (the single report) or several (adds a comparison view,
            the first result being the reference the differences are taken against).
        plotly: "inline" (plotly.js in the page: self-contained, opens offline) or
            "cdn" (a script tag to plotly's CDN: about 4.8 MB smaller, needs the network).

    Returns:
        The HTML text.

    Raises:
        ConfigError: if ``results`` is empty or ``plotly`` is not a mode.
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
    return render_page(
        _TEMPLATE,
        figures,
        title=_page_title(results),
        sections=sections,
        comparison=comparison,
        tool_version=results[0].tool_version,
        plotly=plotly,
    )


def write_report(
    results: Sequence[AuditResult], path: str | os.PathLike[str], *, plotly: str = "inline"
) -> Path:
    """Render ``results`` and write the page atomically to ``path``.

    A failing render leaves no file behind and an existing file untouched.
    """
    text = render_report(results, plotly=plotly)
    return write_atomic(path, text)


# -- one result ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _LayerRow:
    """One row of the layer table: the layer, its index and its share of WCI."""

    index: int
    layer: LayerResult
    share: float | None

    @property
    def shape(self) -> str:
        return "×".join(str(s) for s in self.layer.shape)

    @property
    def numel(self) -> int:
        return int(self.layer.numel)

    @property
    def probes(self) -> str:
        """The count, or "exact" for a route without probes (JSON: 0)."""
        return (
            "exact" if self.layer.exact or self.layer.probes == "exact" else str(self.layer.probes)
        )

    def __getattr__(self, name: str) -> Any:
        # name, frob_norm, trace, trace_se, method, wci_term, wci_term_se, flag, stop_reason
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.layer, name)


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
    rows = [
        _LayerRow(i, la, la.wci_term / wci if la.wci_term is not None and wci else None)
        for i, la in enumerate(result.layers)
    ]
    hutch = sorted((la for la in result.layers if la.history), key=lambda la: -(la.wci_term or 0.0))
    top = hutch[:CONVERGENCE_LAYERS]
    figures: dict[str, Any] = {}
    if result.layers:
        figures[f"{prefix}-layers"] = layers_figure(result)
    bound_curve = bound_figure(result)
    if bound_curve is not None:
        figures[f"{prefix}-bound"] = bound_curve
    if top:
        figures[f"{prefix}-conv"] = convergence_figure(top)
    eps = cfg.get("eps")
    metadata = sorted((result.checkpoint.metadata or {}).items(), key=lambda kv: str(kv[0]))
    return {
        "index": index,
        "id": prefix,
        "colour": PALETTE[index % len(PALETTE)],
        "name": _file_name(result),
        "r": result,
        "cfg": cfg,
        "eps_text": format_eps(float(eps)) if isinstance(eps, (int, float)) else "–",
        "metadata": [(str(k), shorten(str(v), MAX_META_CHARS)) for k, v in metadata],
        "rows": rows,
        "flagged": [r for r in rows if r.flag],
        "top_layers": [la.name for la in top],
        "hutchinson_count": len(hutch),
        "exact_layers": [
            la.name for la in result.layers if not la.history and la.trace is not None
        ],
        "checks": [GateCheck.from_dict(c).row() for c in result.gate.checks],
        "normalisation": normalisation_text(
            result.checkpoint.mean, result.checkpoint.std, cfg.get("preprocessing_source")
        ),
        "wci_layers": wci_layers_sentence(result.wci_layers),
        "wci_layers_most": most_layers_nonpositive(result.wci_layers),
        "wci_se_covers": _wci_se_covers(result),
        "wci_se_text": se_sentence(result.se_covers.get("wci")),
        "trace_se_texts": trace_se_sentences(result.layers),
        # the notes state the approximation once; a result's own note only when it says more
        "pb_note": "" if result.pac_bayes.note == PacBayes().note else result.pac_bayes.note,
        "sqrt_term": _sqrt_term(result),
        "timings": _timings(result),
        "has_layers": f"{prefix}-layers" in figures,
        "has_bound": f"{prefix}-bound" in figures,
        "has_conv": f"{prefix}-conv" in figures,
        "figures": figures,
    }


def _wci_se_covers(result: AuditResult) -> str | None:
    """The WCI tile's line on its SE; None for a result that does not say."""
    covers = result.se_covers.get("wci")
    if covers is None:
        return None
    if not covers:
        return "SE 0: exact routes on the whole split; attack starts not measured"
    return "SE covers " + se_covers_words(covers)


def trace_se_sentences(layers: Sequence[LayerResult]) -> list[str]:
    """Per route (``hutchinson``, ``exact-ggn``, ...), in the order first met: how many
    layers took it and what their trace SEs cover, from each layer's ``se_covers``."""
    routes: dict[str, list[LayerResult]] = {}
    for la in layers:
        if la.trace is not None:
            routes.setdefault(la.method, []).append(la)
    out = []
    for method, group in routes.items():
        covers = list(dict.fromkeys(c for la in group for c in la.se_covers))
        count = f"{len(group)} layer{'s' if len(group) != 1 else ''}"
        exact = " (no probes: no probe noise)" if group[0].exact else ""
        if not covers:
            what = "SE 0, and the attack's random starts were not measured"
        else:
            what = "SE covers " + se_covers_words(covers)
            if "attack-starts" not in covers:
                what += "; not the attack's random starts (not measured)"
        out.append(f"{method}, {count}{exact}: {what}")
    return out


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


# -- several results -----------------------------------------------------------------------
def _comparison(results: list[AuditResult], sections: list[dict[str, Any]]) -> dict[str, Any]:
    """Key figures side by side, per-layer WCI terms overlaid, the largest differences."""
    names = [s["name"] for s in sections]
    order = list(dict.fromkeys(la.name for r in results for la in r.layers))
    terms = [{la.name: la.wci_term for la in r.layers} for r in results]
    ses = [{la.name: la.wci_term_se for la in r.layers} for r in results]
    diffs = _layer_differences(order, terms, ses)
    return {
        "names": names,
        "colours": [s["colour"] for s in sections],
        "mismatches": comparison_warnings(results),
        "noise_sigmas": NOISE_SIGMAS,
        "summary": [_summary_row(results, *compared) for compared in COMPARED],
        "diffs": diffs[:MAX_DIFF_ROWS],
        "n_layers": len(order),
        "layer_counts": [len(r.layers) for r in results],
        "matched": [n for n in order if all(n in t for t in terms)],
        "missing": [d["name"] for d in diffs if d["missing"]],
        "figures": {"cmp-terms": comparison_terms_figure(names, order, terms)},
    }


def se_of(result: AuditResult, key: str) -> float | None:
    """The standard error of :func:`figure_of`'s figure; None where none is measured
    (the PAC-Bayes bound carries none)."""
    if key == "wci":
        return result.wci_se
    return getattr(result.metrics, f"{key}_se", None)


def beyond_noise(diff: float, se_a: float | None, se_b: float | None) -> bool | None:
    """Whether a difference of two independent estimates exceeds its noise:
    ``|a - b| > NOISE_SIGMAS * sqrt(se_a^2 + se_b^2)``. A figure without an SE counts
    as exact (SE 0); None when neither has one, so the reader is not told it is noise
    or not when nothing says."""
    if se_a is None and se_b is None:
        return None
    return abs(diff) > NOISE_SIGMAS * math.hypot(se_a or 0.0, se_b or 0.0)


def comparison_warnings(results: list[AuditResult]) -> list[str]:
    """Settings that differ from the first result's: threat model, data, architecture.
    Results that differ there measure different things; their WCIs need not compare."""
    ref = results[0]
    warnings = []
    for i, r in enumerate(results[1:], start=2):
        for label, a, b in (
            ("eps", ref.config.get("eps"), r.config.get("eps")),
            ("norm", ref.config.get("norm"), r.config.get("norm")),
            ("attack", ref.config.get("attack"), r.config.get("attack")),
            ("dataset", ref.dataset.name or None, r.dataset.name or None),
            ("architecture", ref.checkpoint.arch or None, r.checkpoint.arch or None),
        ):
            if a is None or b is None or a == b:
                continue
            if label == "eps":
                a, b = format_eps(float(a)), format_eps(float(b))
            warnings.append(f"result {i} differs from result 1 in {label}: {b} vs {a}")
    return warnings


def _summary_row(
    results: list[AuditResult], label: str, key: str, lower_is_better: bool
) -> dict[str, Any]:
    """One figure of every result with its SE, and its difference from the first;
    ``better`` is set only for a difference beyond noise (:func:`beyond_noise`)."""
    values = [figure_of(r, key) for r in results]
    ses = [se_of(r, key) for r in results]
    ref, ref_se = values[0], ses[0]
    cells = []
    for v, se in zip(values, ses, strict=True):
        diff = None if v is None or ref is None else v - ref
        rel = None if diff is None or not ref else diff / abs(ref)
        real = None if diff is None else beyond_noise(diff, ref_se, se)
        better = (
            None if diff is None or diff == 0 or real is False else (diff < 0) == lower_is_better
        )
        cells.append(
            {
                "value": v,
                "se": se,
                "diff": diff,
                "rel": rel,
                "better": better,
                "noise": real is False,
            }
        )
    pct = key.endswith("acc_test") or key.endswith("acc_train") or key == "gap_err"
    return {"label": label, "pct": pct, "cells": cells}


def _layer_differences(
    order: list[str], terms: list[dict[str, float | None]], ses: list[dict[str, float | None]]
) -> list[dict[str, Any]]:
    """Per layer: its WCI terms (± SE) across results and their spread, largest spread
    first; a term is marked lower/higher than result 1's only beyond noise."""
    diffs = []
    for n in order:
        values = [t.get(n) for t in terms]
        errors = [e.get(n) for e in ses]
        present = [v for v in values if v is not None]
        ref = values[0]
        cells = []
        for v, se in zip(values, errors, strict=True):
            mark = None
            if (
                v is not None
                and ref is not None
                and v != ref
                and beyond_noise(v - ref, errors[0], se) is not False
            ):
                mark = "better" if v < ref else "worse"
            cells.append({"value": v, "se": se, "mark": mark})
        diffs.append(
            {
                "name": n,
                "terms": values,
                "cells": cells,
                "spread": max(present) - min(present) if len(present) > 1 else None,
                "missing": any(n not in t for t in terms),
                "ref": terms[0].get(n),
            }
        )
    diffs.sort(key=lambda d: -(d["spread"] or 0.0))
    return diffs
