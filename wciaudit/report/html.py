"""The page machinery shared by every wciaudit page: templates, filters, safe scripts.

Every page extends ``base.html.j2`` (one copy of the CSS, the error counter, the
header, the footer and the script that draws the figures). Every string that comes
from a checkpoint, its metadata, a file name or the user goes through jinja2's
autoescaping, and the figure JSON escapes ``<``, ``>`` and ``&`` so that a
``</script>`` inside a layer name stays text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from .._version import __version__
from ..errors import ConfigError
from ..formatting import fmt_int, fmt_num, fmt_p, fmt_pct, fmt_pm, fmt_secs, fmt_signed, sort_key

__all__ = [
    "PLOTLY_MODES",
    "check_plotly_mode",
    "inline_plotly",
    "plotly_cdn_url",
    "render_page",
    "script_json",
    "template_environment",
]

#: how a page gets plotly.js: "inline" (about 4.8 MB in the page, opens offline) or
#: "cdn" (a script tag to plotly's CDN: a small file, but opening it needs the network)
PLOTLY_MODES = ("inline", "cdn")

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


def breakable(text: Any) -> Markup:
    """``text`` escaped, with a line-break opportunity (``<wbr>``) after each ``.``,
    ``_``, ``/``, ``-`` and ``:``, so a long layer or file name wraps between its parts
    rather than in the middle of a word."""
    escaped = str(Markup.escape("" if text is None else text))
    return Markup(re.sub(r"([._/:-])(?=.)", r"\1<wbr>", escaped))


def capitalize_first(text: Any) -> str:
    """``text`` with its first letter upper-case and the rest as it is (jinja2's
    ``capitalize`` lower-cases the rest, layer names and ``Tr(H)`` included)."""
    text = "" if text is None else str(text)
    return text[:1].upper() + text[1:]


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
    env.filters["breakable"] = breakable
    env.filters["capitalize_first"] = capitalize_first
    return env


def check_plotly_mode(plotly: str) -> str:
    """``plotly`` if it is one of :data:`PLOTLY_MODES`; else a :class:`ConfigError`."""
    if plotly not in PLOTLY_MODES:
        raise ConfigError(f"plotly mode must be one of {', '.join(PLOTLY_MODES)}, got {plotly!r}")
    return plotly


def render_page(
    template: str, figures: dict[str, Any], *, plotly: str = "inline", **context: Any
) -> str:
    """Render ``template`` (which extends ``base.html.j2``) with its figures and
    plotly.js inline (``plotly="inline"``) or from plotly's CDN (``"cdn"``);
    ``tool_version`` defaults to this wciaudit's.

    Raises:
        ConfigError: for a ``plotly`` mode not in :data:`PLOTLY_MODES`.
    """
    context.setdefault("tool_version", __version__)
    if check_plotly_mode(plotly) == "cdn":
        scripts = {"plotly_js": None, "plotly_cdn": plotly_cdn_url()}
    else:
        scripts = {"plotly_js": inline_plotly(), "plotly_cdn": None}
    return (
        template_environment()
        .get_template(template)
        .render(figures_json=script_json(figures), **scripts, **context)
    )


def plotly_cdn_url() -> str:
    """The CDN address of the plotly.js that the installed plotly ships (what plotly's
    own ``include_plotlyjs="cdn"`` writes), so the figures meet the version they were
    made for."""
    from plotly.offline import get_plotlyjs_version

    return f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"


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
