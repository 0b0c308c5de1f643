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
from ..errors import ConfigError
from ..result import SCHEMA_VERSION, AuditResult, json_safe, write_atomic
from ..stats import kendall_tau, rank_p_values, spearman_rho, tau_null_sd

#: version of the track JSON layout
TRACK_SCHEMA_VERSION = 1
#: the ``kind`` of a track JSON, which tells it from a scan's result
TRACK_KIND = "wciaudit-track"
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
class SkippedCheckpoint:
    """A checkpoint of the run that could not be scanned (truncated, unreadable, a model
    that does not fit it), and why; the run goes on without it."""

    epoch: float
    path: str
    reason: str


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
    skipped: list[SkippedCheckpoint] = field(default_factory=list)

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
                "kind": TRACK_KIND,
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
                "skipped": [vars(s) for s in self.skipped],
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

    @classmethod
    def from_dict(cls, d: Any) -> TrackResult:
        """A track JSON (:meth:`to_dict`) read back; the series and markers are derived
        again from the scans it holds.

        Raises:
            ConfigError: not a track result, another track schema, or a malformed one.
        """
        if not is_track_dict(d):
            raise ConfigError('not a wciaudit track result (no "kind": "wciaudit-track")')
        version = d.get("track_schema_version")
        if version != TRACK_SCHEMA_VERSION:
            raise ConfigError(
                f"unsupported track_schema_version {version!r}; this wciaudit reads "
                f"version {TRACK_SCHEMA_VERSION}"
            )
        try:
            return cls(
                entries=[
                    TrackEntry(
                        float(c["epoch"]),
                        str(c["path"]),
                        str(c.get("sha256", "")),
                        bool(c.get("cached", False)),
                        AuditResult.from_dict(c["result"]),
                    )
                    for c in d.get("checkpoints") or []
                ],
                epoch_source=str(d.get("epoch_source", "")),
                settings=dict(d.get("settings") or {}),
                cache_dir=d.get("cache_dir"),
                correlations=[Correlation(**c) for c in d.get("correlations") or []],
                notes=[str(n) for n in d.get("notes") or []],
                tool_version=str(d.get("tool_version", "")),
                skipped=[
                    SkippedCheckpoint(float(s["epoch"]), str(s["path"]), str(s["reason"]))
                    for s in d.get("skipped") or []
                ],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed wciaudit track result: {exc!r}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrackResult:
        """Read a track JSON written by :meth:`save` (``wciaudit track --json``)."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read track result {p}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}: not a JSON file: {exc.msg} at line {exc.lineno}") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from None


def read_track(path: str | os.PathLike[str]) -> TrackResult | None:
    """The track result in ``path``; None when the file is not one (a scan's result, or
    anything :meth:`AuditResult.load` will report on)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not is_track_dict(data):
        return None
    try:
        return TrackResult.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def is_track_dict(d: Any) -> bool:
    """True for the JSON object of a track result (``"kind": "wciaudit-track"``)."""
    return isinstance(d, dict) and d.get("kind") == TRACK_KIND


def overfitting_sentence(result: TrackResult, sigmas: float = 2.0) -> str | None:
    """Where the robust test loss is lowest and whether it rises after that epoch by more
    than ``sigmas`` standard errors (robust overfitting); None when it was not measured.

    With one measured checkpoint, or the lowest loss at the last one, nothing rises
    after it, and the sentence says so rather than announcing overfitting.
    """
    best = result.markers()["best_robust_test_loss"]
    if best is None:
        return None
    measured = [
        (e.epoch, e.result.metrics.robust_loss_test, e.result.metrics.robust_loss_test_se)
        for e in result.entries
        if e.result.metrics.robust_loss_test is not None
    ]
    epoch, loss = best["epoch"], best["robust_loss_test"]
    head = f"lowest robust test loss at epoch {epoch:g} ({loss:.4g})"
    if len(measured) < 2:
        return f"{head}: one measured checkpoint, so no trend over training to read"
    later = [m for m in measured if m[0] > epoch]
    if not later:
        return f"{head}, the last checkpoint: no robust overfitting within this run"
    best_se = next(se for e, _, se in measured if e == epoch) or 0.0
    top_epoch, top, top_se = max(later, key=lambda m: m[1])
    rise, noise = top - loss, sigmas * math.hypot(best_se, top_se or 0.0)
    if rise > noise:
        return (
            f"{head}; it rises to {top:.4g} by epoch {top_epoch:g} (+{rise:.3g}, more than "
            f"{sigmas:g} SE): robust overfitting after epoch {epoch:g}"
        )
    return (
        f"{head}; the later checkpoints stay within {sigmas:g} SE of it (highest "
        f"{top:.4g} at epoch {top_epoch:g}): no clear robust overfitting"
    )


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
