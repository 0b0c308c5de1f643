"""Track a training run: every checkpoint scanned, ordered by epoch, WCI set against the gap.

- :mod:`.files`: find a run's checkpoints, read their epoch, order and hash them;
- :mod:`.cache`: one cached result per checkpoint and settings, in a folder the user owns;
- :mod:`.result`: :class:`TrackResult`, its series, correlations and markers;
- :mod:`.run`: :func:`track`, which ties them together.

The page is drawn by :func:`wciaudit.report.render_track`; the rank statistics are
:mod:`wciaudit.stats`. The names that need torch (those of :mod:`.files`, :mod:`.cache`
and :mod:`.run`) are imported on first use, so that the report of a saved track result
(:mod:`.result`) loads without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr
from .result import (
    MEASURES,
    TARGETS,
    Correlation,
    SkippedCheckpoint,
    TrackEntry,
    TrackResult,
    is_track_dict,
    overfitting_sentence,
)

if TYPE_CHECKING:
    from .cache import CACHE_ENV, cache_folder, cache_root
    from .files import (
        CHECKPOINT_SUFFIXES,
        RunCheckpoint,
        find_checkpoints,
        order_checkpoints,
        run_stem,
    )
    from .run import TrackProgress, track

__all__ = [
    "CACHE_ENV",
    "CHECKPOINT_SUFFIXES",
    "MEASURES",
    "TARGETS",
    "Correlation",
    "RunCheckpoint",
    "SkippedCheckpoint",
    "TrackEntry",
    "TrackProgress",
    "TrackResult",
    "find_checkpoints",
    "order_checkpoints",
    "overfitting_sentence",
    "is_track_dict",
    "run_stem",
    "cache_folder",
    "cache_root",
    "track",
]

#: public name -> the module that defines it, imported when the name is first read
_LAZY = {
    **dict.fromkeys(("CACHE_ENV", "cache_folder", "cache_root"), ".cache"),
    **dict.fromkeys(
        (
            "CHECKPOINT_SUFFIXES",
            "RunCheckpoint",
            "find_checkpoints",
            "order_checkpoints",
            "run_stem",
        ),
        ".files",
    ),
    **dict.fromkeys(("TrackProgress", "track"), ".run"),
}

__getattr__ = lazy_getattr(__name__, _LAZY)
