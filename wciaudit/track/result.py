"""What ``track`` returns: the run's scans in epoch order, the series, the correlations.

The correlations are those of :mod:`wciaudit.stats` (Kendall tau-b, Spearman rho) of
WCI and its two ablations, sum_k ||W_k||_F^2 and sum_k Tr(H_k), against gap_loss and
gap_err, so one sees whether WCI tracks the gap better than the norm or the curvature
alone. The markers are the epoch of the lowest robust test loss (where robust
overfitting starts) and the epoch where WCI peaks.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..result import SCHEMA_VERSION, AuditResult, json_safe, write_atomic
from ..stats import kendall_tau, rank_p_values, spearman_rho, tau_null_sd

#: version of the track JSON layout
TRACK_SCHEMA_VERSION = 1
#: the figures correlated against the gap: WCI and its two ablations
MEASURES = {
    "wci": "WCI",
    "sum_frob_sq": "sum_k ||W_k||_F^2",
    "sum_trace": "sum_k Tr(H_k)",
}
TARGETS = {"gap_loss": "gap_loss", "gap_err": "gap_err"}
#: per-checkpoint series, in the order the JSON lists them
SERIES_KEYS = (
    "wci",
    "wci_se",
    "sum_frob_sq",
    "sum_trace",
    "gap_loss",
    "gap_loss_se",
    "gap_err",
    "gap_err_se",
    "clean_acc_train",
    "clean_acc_test",
    "robust_acc_train",
    "robust_acc_test",
    "clean_loss_train",
    "clean_loss_test",
    "robust_loss_train",
    "robust_loss_test",
    "bound",
)


@dataclass
class Correlation:
    """Rank correlation of one measure with one gap over the checkpoints of a run."""

    measure: str
    target: str
    n: int
    kendall_tau: float | None
    spearman_rho: float | None
    kendall_p: float | None = None
    spearman_p: float | None = None


def correlate(series: dict[str, list[Any]], measure: str, target: str) -> Correlation:
    """Correlate ``series[measure]`` with ``series[target]`` over the checkpoints where
    both were measured."""
    pairs = [
        (float(a), float(b))
        for a, b in zip(series[measure], series[target], strict=True)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
    ]
    x, y = [a for a, _ in pairs], [b for _, b in pairs]
    tau, rho = kendall_tau(x, y), spearman_rho(x, y)
    kp, sp = rank_p_values(x, y) if tau is not None and rho is not None else (None, None)
    return Correlation(measure, target, len(pairs), tau, rho, kp, sp)


@dataclass
class TrackEntry:
    """One scanned checkpoint of the run."""

    epoch: float
    path: str
    sha256: str
    cached: bool
    result: AuditResult


@dataclass
class TrackResult:
    """A whole run: the scans in epoch order, the correlations and the markers."""

    entries: list[TrackEntry] = field(default_factory=list)
    epoch_source: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    correlations: list[Correlation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tool_version: str = __version__

    @property
    def epochs(self) -> list[float]:
        return [e.epoch for e in self.entries]

    @property
    def scanned(self) -> int:
        """How many checkpoints were scanned now (not read from the cache)."""
        return sum(not e.cached for e in self.entries)

    def series(self) -> dict[str, list[Any]]:
        """Per-checkpoint figures, each list in epoch order (None where not measured)."""
        out: dict[str, list[Any]] = {
            "epoch": self.epochs,
            "checkpoint": [Path(e.path).name for e in self.entries],
        }
        for key in SERIES_KEYS:
            out[key] = [figure_of(e.result, key) for e in self.entries]
        return out

    def layer_terms(self) -> tuple[list[str], list[list[float | None]]]:
        """Layer names (first-seen order) and their WCI terms, layer x epoch."""
        names: list[str] = []
        for e in self.entries:
            for la in e.result.layers:
                if la.name not in names:
                    names.append(la.name)
        rows = []
        for name in names:
            row = []
            for e in self.entries:
                term = next((la.wci_term for la in e.result.layers if la.name == name), None)
                row.append(term)
            rows.append(row)
        return names, rows

    def correlation(self, measure: str, target: str) -> Correlation | None:
        return next(
            (c for c in self.correlations if c.measure == measure and c.target == target), None
        )

    def markers(self) -> dict[str, dict[str, Any] | None]:
        """Epoch of the lowest robust test loss (robust overfitting starts after it) and
        epoch of the highest WCI; None when the figure was not measured."""
        s = self.series()
        return {
            "best_robust_test_loss": _argext(
                s["epoch"], s["robust_loss_test"], min, "robust_loss_test"
            ),
            "wci_peak": _argext(s["epoch"], s["wci"], max, "wci"),
        }

    def to_dict(self) -> dict[str, Any]:
        names, rows = self.layer_terms()
        series = self.series()
        series["layers"] = names
        series["wci_terms"] = rows
        return json_safe(
            {
                "kind": "wciaudit-track",
                "track_schema_version": TRACK_SCHEMA_VERSION,
                "result_schema_version": SCHEMA_VERSION,
                "tool_version": self.tool_version,
                "epoch_source": self.epoch_source,
                "settings": self.settings,
                "cache_dir": self.cache_dir,
                "series": series,
                "correlations": [vars(c) for c in self.correlations],
                "tau_null_sd": tau_null_sd(len(self.entries)),
                "markers": self.markers(),
                "notes": self.notes,
                "checkpoints": [
                    {
                        "epoch": e.epoch,
                        "path": e.path,
                        "sha256": e.sha256,
                        "cached": e.cached,
                        "result": e.result.to_dict(),
                    }
                    for e in self.entries
                ],
            }
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON atomically."""
        return write_atomic(path, self.to_json())


def figure_of(result: AuditResult, key: str) -> float | None:
    """One figure of a scan by its series key (:data:`SERIES_KEYS`), None if not measured."""
    if key in ("wci", "wci_se"):
        return getattr(result, key)
    if key == "sum_frob_sq":
        return result.sum_frob_sq if result.layers else None
    if key == "sum_trace":
        return result.sum_trace
    if key == "bound":
        return result.pac_bayes.bound
    return getattr(result.metrics, key)


def _argext(
    epochs: list[float], values: list[Any], pick: Callable[..., Any], key: str
) -> dict[str, Any] | None:
    known = [
        (v, e) for e, v in zip(epochs, values, strict=True) if v is not None and math.isfinite(v)
    ]
    if not known:
        return None
    # first epoch reaching the extreme: min/max over (value, epoch) would prefer the later
    best = pick(v for v, _ in known)
    epoch = next(e for v, e in known if v == best)
    return {"epoch": epoch, key: best}
