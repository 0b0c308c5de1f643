"""The page machinery shared by every wciaudit page: templates, filters, safe scripts.

Every page extends ``base.html.j2`` (one copy of the CSS, the error counter, the
header, the footer and the script that draws the figures). Every string that comes
from a checkpoint, its metadata, a file name or the user goes through jinja2's
autoescaping, and the figure JSON escapes ``<``, ``>`` and ``&`` so that a
``</script>`` inside a layer name stays text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from .._version import __version__
from ..formatting import fmt_int, fmt_num, fmt_p, fmt_pct, fmt_pm, fmt_secs, fmt_signed, sort_key

__all__ = ["inline_plotly", "render_page", "script_json", "template_environment"]

#: jinja2 filter name -> formatter of :mod:`wciaudit.formatting`
FILTERS: dict[str, Callable[..., str]] = {
    "num": fmt_num,
    "pm": fmt_pm,
    "pct": fmt_pct,
    "secs": fmt_secs,
    "int": fmt_int,
    "key": sort_key,
    "coef": fmt_signed,
    "pval": fmt_p,
}


def _load_template(name: str) -> tuple[str, str, Any] | None:
    """Installed wheel first (``wciaudit/templates``), then the repo's ``templates/``."""
    try:
        packaged = resources.files("wciaudit").joinpath("templates", name)
        if packaged.is_file():
            return packaged.read_text(encoding="utf-8"), f"wciaudit/templates/{name}", lambda: True
    except (FileNotFoundError, ModuleNotFoundError, NotADirectoryError):
        pass
    repo = Path(__file__).resolve().parents[2] / "templates" / name
    if repo.is_file():
        return repo.read_text(encoding="utf-8"), str(repo), lambda: True
    return None


def _defined(formatter: Callable[..., str]) -> Callable[..., str]:
    """A formatter that reads an undefined template variable as a missing figure."""

    def apply(value: Any, *args: Any) -> str:
        return formatter(None if isinstance(value, jinja2.Undefined) else value, *args)

    return apply


def template_environment() -> jinja2.Environment:
    """The jinja2 environment of every wciaudit page: the packaged templates, autoescape
    on, and the number filters of :data:`FILTERS`."""
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update({name: _defined(f) for name, f in FILTERS.items()})
    return env


def render_page(template: str, figures: dict[str, Any], **context: Any) -> str:
    """Render ``template`` (which extends ``base.html.j2``) with its figures and
    plotly.js inline; ``tool_version`` defaults to this wciaudit's."""
    context.setdefault("tool_version", __version__)
    return (
        template_environment()
        .get_template(template)
        .render(figures_json=script_json(figures), plotly_js=inline_plotly(), **context)
    )


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
