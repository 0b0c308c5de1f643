"""Results -> self-contained HTML pages (jinja2 + plotly, no network request).

- :mod:`.single`: one audit result, or several compared (:func:`render_report`);
- :mod:`.track_page`: a tracked training run (:func:`render_track`);
- :mod:`.charts`: the plotly figures, one palette and layout for every page;
- :mod:`.html`: the templates (all extend ``base.html.j2``), filters and safe scripts.

Numbers and text are formatted by :mod:`wciaudit.formatting`.
"""

from .single import render_report, write_report
from .track_page import render_track, write_track_page

__all__ = ["render_report", "render_track", "write_report", "write_track_page"]
