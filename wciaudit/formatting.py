"""How wciaudit writes numbers and text for people: the pages, the terminal, the gate messages.

One module, so that a figure reads the same everywhere it is shown:

- :func:`fmt_num`, :func:`fmt_pm`, :func:`fmt_pct`, :func:`fmt_secs`, :func:`fmt_int`:
  the pages' figures (``–`` where nothing was measured; ``a ± b`` with the value to
  the SE's decimals);
- :func:`fmt_estimate`: the compact ``12.3 ± 0.4`` of the terminal and gate messages;
- :func:`fmt_fixed`, :func:`fmt_signed`, :func:`fmt_p`, :func:`fmt_sigmas`: coefficients, p-values, margins;
- :func:`format_eps`: eps as ``8/255`` where it is a whole number of 255ths;
- :func:`one_line`, :func:`md_cell`, :func:`svg_text`, :func:`shorten`: text.

Example:
    >>> fmt_pm(12.3, 0.4), fmt_estimate(12.3, 0.4), fmt_pct(0.5, 0.01)
    ('12.30 ± 0.40', '12.3 ± 0.4', '50.0% ± 1.0')
    >>> fmt_num(None), fmt_estimate(None, missing="null"), format_eps(8 / 255)
    ('–', 'null', '8/255')
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

from .config import format_eps

__all__ = [
    "MISSING",
    "break_lines",
    "fmt_estimate",
    "fmt_fixed",
    "fmt_int",
    "fmt_num",
    "fmt_p",
    "fmt_pct",
    "fmt_pm",
    "fmt_secs",
    "fmt_sigmas",
    "fmt_signed",
    "format_eps",
    "md_cell",
    "one_line",
    "shorten",
    "sort_key",
    "svg_text",
]

#: shown for a figure that could not be measured
MISSING = "–"


# -- numbers -------------------------------------------------------------------------------
def fmt_num(value: Any, digits: int = 4) -> str:
    """``digits`` significant digits, ``–`` for a figure that could not be measured."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
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
    if value is None:
        return MISSING
    if se is None or not isinstance(se, (int, float)) or not math.isfinite(se) or se <= 0:
        return fmt_num(value, digits)
    decimals = max(0, 1 - math.floor(math.log10(se)))
    if decimals <= 8 and (value == 0 or 1e-4 <= abs(value) < 1e6):
        return f"{value:.{decimals}f} ± {se:.{decimals}f}"
    return f"{fmt_num(value, digits)} ± {se:.2g}"


def fmt_pct(value: Any, se: Any = None) -> str:
    """An accuracy in [0, 1] as a percentage, with its SE in percentage points."""
    if value is None:
        return MISSING
    if se is None or se <= 0:
        return f"{100 * value:.1f}%"
    decimals = max(1, 1 - math.floor(math.log10(100 * se)))
    return f"{100 * value:.{decimals}f}% ± {100 * se:.{decimals}f}"


def fmt_secs(value: Any) -> str:
    """A duration: ``4.2 s``, ``42 s``, ``3 min 5 s``."""
    if value is None:
        return MISSING
    if value < 60:
        return f"{value:.2g} s" if value < 10 else f"{value:.0f} s"
    minutes, seconds = divmod(value, 60)
    return f"{int(minutes)} min {seconds:.0f} s"


def fmt_int(value: Any) -> str:
    """A count with thousands separators."""
    return MISSING if value is None else f"{int(value):,}"


def sort_key(value: Any) -> str:
    """A table's ``data-v`` sort key: 6 significant digits, empty when missing."""
    if value is None or isinstance(value, str):
        return ""
    return f"{value:.6g}"


def fmt_estimate(
    value: float | None, se: float | None = None, *, digits: int = 4, missing: str = MISSING
) -> str:
    """The compact ``12.3 ± 0.4`` (value to ``digits`` significant digits, SE to 2) of
    the terminal and the gate messages; no ``±`` when ``se`` is None."""
    if value is None:
        return missing
    text = f"{value:.{digits}g}"
    return text if se is None else f"{text} ± {se:.2g}"


def fmt_fixed(value: float | None, decimals: int = 3) -> str:
    """A figure to a fixed number of decimals (terminal tables whose columns align)."""
    return MISSING if value is None else f"{value:.{decimals}f}"


def fmt_signed(value: float | None, decimals: int = 3) -> str:
    """A correlation coefficient with its sign: ``+0.667``."""
    return MISSING if value is None else f"{value:+.{decimals}f}"


def fmt_p(value: float | None) -> str:
    """A p-value to two significant digits; ``< 0.0001`` below that."""
    if value is None:
        return MISSING
    return "< 0.0001" if value < 1e-4 else f"{value:.2g}"


def fmt_sigmas(margin: float) -> str:
    """A margin in standard errors: one decimal, none from 100 on."""
    return f"{margin:.1f}" if abs(margin) < 100 else f"{margin:.0f}"


# -- text ----------------------------------------------------------------------------------
def one_line(text: Any) -> str:
    """Every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


def md_cell(text: Any) -> str:
    """Text for a Markdown table cell: ``|`` escaped, on one line."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def svg_text(text: Any) -> str:
    """Plotly draws labels as pseudo-HTML (``<b>``, ``<a href>``): hand it entities."""
    return html.escape(str(text), quote=False)


def shorten(text: str, limit: int, *, keep: str = "start") -> str:
    """``text`` cut to ``limit`` characters with ``…``, keeping its ``start`` or ``end``."""
    if len(text) <= limit:
        return text
    if keep == "end":
        return "…" + text[-(limit - 1) :]
    return text[: limit - 1] + "…"


def break_lines(text: str, width: int, separators: str = "._-/:") -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken only after one of
    ``separators`` (``epoch_10.`` / ``safetensors``), so that a terminal never splits a
    file or layer name inside a word; a piece longer than ``width`` stays whole on its
    own line. ``separators="/"`` keeps a path's file name whole.

    Example:
        >>> break_lines("robust_overfitting_epoch_001.safetensors", 20)
        ['robust_overfitting_', 'epoch_001.', 'safetensors']
    """
    sep = re.escape(separators)
    pieces = re.findall(rf"[^{sep}]+[{sep}]*|[{sep}]+", text)
    lines: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + len(piece) > width:
            lines.append(current)
            current = piece
        else:
            current += piece
    if current or not lines:
        lines.append(current)
    return lines
