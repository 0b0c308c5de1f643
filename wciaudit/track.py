"""Track a training run: scan every checkpoint, order by epoch, relate WCI to the robust gap.

The paper's central observation (Xu & Zhang, arXiv 2410.07719) is that the
Weight-Curvature Index moves with the robust generalization gap over training, i.e.
with robust overfitting. :func:`track` scans every checkpoint of a run with one data
set and one :class:`~wciaudit.config.ScanConfig`, orders them by epoch and reports:

- the series (WCI +- SE, gap_loss, gap_err, clean and robust accuracy and loss on S
  and T, the PAC-Bayes bound, per-layer WCI terms);
- Kendall tau-b and Spearman rho of WCI against gap_loss and gap_err, and the same for
  the ablations sum_k ||W_k||_F^2 and sum_k Tr(H_k), so one sees whether WCI tracks
  the gap better than the norm or the curvature alone;
- the epoch of the lowest robust test loss (where robust overfitting starts) and the
  epoch where WCI peaks.

Ordering: by the ``epoch`` metadata of every checkpoint when each one has it, else by a
natural sort of the file names (``epoch_2`` before ``epoch_10``).

Caching: each scan is stored as an :class:`~wciaudit.result.AuditResult` JSON under a
key made of the checkpoint's sha256 and a digest of every setting that changes the
numbers, written atomically as soon as it is done. Re-running after a new epoch scans
only the new file; an interrupted run keeps what it finished.

Example:
    >>> kendall_tau([1, 2, 3, 4], [1, 3, 2, 4])
    0.6666666666666666
    >>> spearman_rho([1, 2, 3, 4], [1, 3, 2, 4])
    0.8
    >>> t = track(["sample_models/run_digits_cnn"], "sample", eps="0.1",
    ...           arch="sample_models/digits_cnn.py", train_samples=300)  # doctest: +SKIP
    >>> t.correlation("wci", "gap_loss").kendall_tau  # doctest: +SKIP
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ._version import __version__
from .config import ScanConfig, format_eps
from .errors import ConfigError
from .report import fmt_num, inline_plotly, script_json, svg_text, template_environment
from .result import SCHEMA_VERSION, AuditResult, write_atomic
from .scan import scan

__all__ = [
    "CACHE_DIR_NAME",
    "CHECKPOINT_SUFFIXES",
    "Correlation",
    "RunCheckpoint",
    "TrackEntry",
    "TrackResult",
    "find_checkpoints",
    "order_checkpoints",
    "kendall_tau",
    "spearman_rho",
    "track",
    "render_track",
    "write_track_page",
]

#: file suffixes taken as checkpoints inside a run folder
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
#: default cache folder, inside the run folder
CACHE_DIR_NAME = ".wciaudit-cache"
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
    "wci", "wci_se", "sum_frob_sq", "sum_trace",
    "gap_loss", "gap_loss_se", "gap_err", "gap_err_se",
    "clean_acc_train", "clean_acc_test", "robust_acc_train", "robust_acc_test",
    "clean_loss_train", "clean_loss_test", "robust_loss_train", "robust_loss_test",
    "bound",
)

#: progress(stage, advance, total): stage "checkpoints" after each checkpoint (done or
#: read from the cache), then the stages of :func:`wciaudit.scan` for the one running
TrackProgress = Callable[[str, int, "int | None"], None]


# -- finding and ordering checkpoints --------------------------------------------------------
@dataclass(frozen=True)
class RunCheckpoint:
    """One checkpoint of a run and where it sits on the epoch axis.

    Attributes:
        path: the file (or timm folder).
        epoch: its position: the ``epoch`` metadata, else the last number in the file
            name, else its 1-based rank in the natural sort.
        epoch_source: ``metadata``, ``file name`` or ``position`` (the same for a run).
    """

    path: Path
    epoch: float
    epoch_source: str


def find_checkpoints(sources: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand run folders, globs and file names into checkpoint paths (no duplicates).

    A folder that holds ``config.json`` is one timm checkpoint; any other folder is a
    run folder whose checkpoints are its files ending in :data:`CHECKPOINT_SUFFIXES` and
    its timm sub-folders (not recursive; hidden entries skipped). A source that does
    not exist is read as a glob pattern.

    Raises:
        ConfigError: no source given, a source that matches nothing, or no checkpoint.
    """
    if not sources:
        raise ConfigError("no run given: pass a run folder, a glob or checkpoint files")
    found: list[Path] = []
    for source in sources:
        text = os.fspath(source)
        path = Path(text).expanduser()
        if path.is_dir() and not (path / "config.json").is_file():
            inside = [
                p for p in path.iterdir()
                if not p.name.startswith(".")
                and ((p.is_file() and p.name.endswith(CHECKPOINT_SUFFIXES))
                     or (p.is_dir() and (p / "config.json").is_file()))
            ]
            if not inside:
                raise ConfigError(
                    f"{text} holds no checkpoint (files ending in {', '.join(CHECKPOINT_SUFFIXES)} "
                    "or timm folders with config.json)"
                )
            found.extend(inside)
        elif path.exists():
            found.append(path)
        elif glob.has_magic(text):
            matches = [Path(m) for m in glob.glob(os.path.expanduser(text))]
            matches = [m for m in matches if m.is_file() or (m / "config.json").is_file()]
            if not matches:
                raise ConfigError(f"the pattern {text!r} matches no checkpoint")
            found.extend(matches)
        else:
            raise ConfigError(f"no such file or folder: {text}")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders digit runs by value: ``epoch_2`` < ``epoch_10``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in _DIGITS.split(name) if part)


def read_epoch(path: str | os.PathLike[str]) -> float | None:
    """The ``epoch`` a checkpoint states about itself, or None.

    Read from the safetensors header metadata, a timm folder's ``config.json``, or the
    top level of a ``.pt`` dict (``torch.load(weights_only=True)``); nothing else is run.
    """
    p = Path(path)
    value: Any = None
    try:
        if p.is_dir():
            value = json.loads((p / "config.json").read_text(encoding="utf-8")).get("epoch")
        elif p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as fh:
                value = (fh.metadata() or {}).get("epoch")
        elif p.suffix in (".pt", ".pth", ".bin"):
            import torch

            obj = torch.load(str(p), map_location="cpu", weights_only=True)
            value = obj.get("epoch") if isinstance(obj, dict) else None
    except Exception:  # an unreadable header only means "no epoch"; the scan reports the file
        return None
    try:
        epoch = float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
    return epoch if epoch is not None and math.isfinite(epoch) else None


def order_checkpoints(paths: Sequence[str | os.PathLike[str]]) -> list[RunCheckpoint]:
    """Order a run's checkpoints by epoch.

    When every checkpoint states an ``epoch`` (:func:`read_epoch`) they are ordered by
    it (ties by natural name); otherwise by a natural sort of the file names, with the
    epoch taken from the last number in each name when all names have one, else the
    rank.
    """
    items = [Path(p) for p in paths]
    by_name = sorted(items, key=lambda p: natural_key(p.name))
    epochs = {p: read_epoch(p) for p in items}
    if items and all(e is not None for e in epochs.values()):
        ordered = sorted(by_name, key=lambda p: epochs[p])  # stable: ties keep name order
        return [RunCheckpoint(p, float(epochs[p]), "metadata") for p in ordered]
    numbers = [_DIGITS.findall(p.name.removesuffix(p.suffix) if p.is_file() else p.name) for p in by_name]
    if by_name and all(numbers):
        return [RunCheckpoint(p, float(n[-1]), "file name") for p, n in zip(by_name, numbers, strict=True)]
    return [RunCheckpoint(p, float(i + 1), "position") for i, p in enumerate(by_name)]


# -- the cache -----------------------------------------------------------------------------
def checkpoint_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a checkpoint file; for a timm folder, of its config and weights files."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    digest = hashlib.sha256()
    for f in files:
        if len(files) > 1:
            digest.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(2**20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def settings_digest(settings: dict[str, Any]) -> str:
    """Digest of the settings that change a scan's numbers (canonical JSON, sha256)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _data_key(spec: str | None) -> dict[str, Any] | None:
    """A data spec as a cache key: a named file or folder by its resolved path, plus
    size and modification time for a file, so that a changed file is scanned again."""
    if spec is None:
        return None
    p = Path(spec).expanduser()
    if p.is_file():
        st = p.stat()
        return {"spec": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if p.is_dir():
        return {"spec": str(p.resolve())}
    return {"spec": spec}


def _arch_key(spec: str | None) -> dict[str, Any] | None:
    """An arch spec as a cache key: a ``models.py[:Class]`` file by its content, so a
    relative or absolute path to the same file gives the same key and an edited model
    definition does not."""
    if spec is None:
        return None
    path_text, _, class_name = spec.rpartition(":") if spec.count(":") and not Path(spec).is_file() else (spec, "", "")
    p = Path(path_text).expanduser()
    if path_text.endswith(".py") and p.is_file():
        return {"file_sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "class": class_name or None}
    return {"spec": spec}


# -- correlations --------------------------------------------------------------------------
def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b (ties counted as in scipy.stats.kendalltau's default).

    tau_b = (P - Q) / sqrt((P + Q + T) (P + Q + U)), P / Q the concordant / discordant
    pairs, T / U the pairs tied in x only / y only. None for fewer than 3 pairs or a
    constant series (undefined). O(n^2): runs have tens of checkpoints.
    """
    _check_pairs(x, y)
    n = len(x)
    if n < 3:
        return None
    p = q = t = u = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                t += 1
            elif dy == 0:
                u += 1
            elif (dx > 0) == (dy > 0):
                p += 1
            else:
                q += 1
    denom = math.sqrt((p + q + t) * (p + q + u))
    return None if denom == 0 else (p - q) / denom


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson correlation of the average ranks (ties share a rank).

    None for fewer than 3 pairs or a constant series.
    """
    _check_pairs(x, y)
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _check_pairs(x: Sequence[float], y: Sequence[float]) -> None:
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if any(not math.isfinite(v) for v in (*x, *y)):
        raise ValueError("x and y must be finite numbers")


def _p_values(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """Two-sided p-values of tau and rho from scipy, or (None, None) without scipy."""
    try:
        from scipy import stats
    except ImportError:
        return None, None
    with warnings.catch_warnings():  # scipy warns on tiny n; the n is reported beside
        warnings.simplefilter("ignore")
        kp = float(stats.kendalltau(x, y).pvalue)
        sp = float(stats.spearmanr(x, y).pvalue)
    return (kp if math.isfinite(kp) else None), (sp if math.isfinite(sp) else None)


def tau_null_sd(n: int) -> float | None:
    """SD of Kendall's tau when there is no association, sqrt(2(2n+5) / (9n(n-1)))."""
    return math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1))) if n >= 2 else None


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
        (float(a), float(b)) for a, b in zip(series[measure], series[target], strict=True)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
    ]
    x, y = [a for a, _ in pairs], [b for _, b in pairs]
    tau, rho = kendall_tau(x, y), spearman_rho(x, y)
    kp, sp = _p_values(x, y) if tau is not None and rho is not None else (None, None)
    return Correlation(measure, target, len(pairs), tau, rho, kp, sp)


# -- the run -------------------------------------------------------------------------------
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
        out: dict[str, list[Any]] = {"epoch": self.epochs, "checkpoint": [Path(e.path).name for e in self.entries]}
        for key in SERIES_KEYS:
            out[key] = [_figure(e.result, key) for e in self.entries]
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
        return next((c for c in self.correlations if c.measure == measure and c.target == target), None)

    def markers(self) -> dict[str, dict[str, Any] | None]:
        """Epoch of the lowest robust test loss (robust overfitting starts after it) and
        epoch of the highest WCI; None when the figure was not measured."""
        s = self.series()
        return {
            "best_robust_test_loss": _argext(s["epoch"], s["robust_loss_test"], min, "robust_loss_test"),
            "wci_peak": _argext(s["epoch"], s["wci"], max, "wci"),
        }

    def to_dict(self) -> dict[str, Any]:
        names, rows = self.layer_terms()
        series = self.series()
        series["layers"] = names
        series["wci_terms"] = rows
        return _finite({
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
                {"epoch": e.epoch, "path": e.path, "sha256": e.sha256, "cached": e.cached,
                 "result": e.result.to_dict()}
                for e in self.entries
            ],
        })

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON atomically."""
        return write_atomic(path, self.to_json())


def _finite(obj: Any) -> Any:
    """Non-finite floats become None (JSON null), as in the scan result."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _figure(result: AuditResult, key: str) -> float | None:
    if key in ("wci", "wci_se"):
        return getattr(result, key)
    if key == "sum_frob_sq":
        return result.sum_frob_sq if result.layers else None
    if key == "sum_trace":
        return result.sum_trace
    if key == "bound":
        return result.pac_bayes.bound
    return getattr(result.metrics, key)


def _argext(epochs: list[float], values: list[Any], pick: Callable[..., Any], key: str) -> dict[str, Any] | None:
    known = [(v, e) for e, v in zip(epochs, values, strict=True) if v is not None and math.isfinite(v)]
    if not known:
        return None
    # first epoch reaching the extreme: min/max over (value, epoch) would prefer the later
    best = pick(v for v, _ in known)
    epoch = next(e for v, e in known if v == best)
    return {"epoch": epoch, key: best}


def track(
    sources: Sequence[str | os.PathLike[str]],
    data: str | os.PathLike[str] | None = None,
    *,
    config: ScanConfig | None = None,
    arch: str | None = None,
    arch_args: dict[str, Any] | str | None = None,
    num_classes: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    progress: TrackProgress | None = None,
    **settings: Any,
) -> TrackResult:
    """Scan every checkpoint of a training run with the same data and settings.

    Args:
        sources: run folders, glob patterns or checkpoint paths (:func:`find_checkpoints`).
        data: as for :func:`wciaudit.scan` (``None``: each checkpoint's named dataset).
        config: the scan settings, or pass them as keyword ``settings`` (``eps="0.1"``).
        arch, arch_args, num_classes, mean, std: checkpoint loading options.
        cache_dir: where the per-checkpoint results live (default: ``.wciaudit-cache``
            inside the run folder, or beside the first checkpoint).
        use_cache: False scans everything again (and refreshes the cache).
        progress: ``progress(stage, advance, total)``, see :data:`TrackProgress`.

    Returns:
        The :class:`TrackResult`, entries in epoch order.

    Raises:
        ConfigError, CheckpointError, DataError: with a one-line message. Checkpoints
        scanned before the failure stay in the cache.
    """
    if config is not None and settings:
        config = config.with_(**settings)
    elif config is None:
        known = {f.name for f in fields(ScanConfig)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        config = ScanConfig(**settings)
    ordered = order_checkpoints(find_checkpoints(sources))
    cache = _cache_folder(sources, ordered, cache_dir)
    key_settings = _key_settings(config, data, arch, arch_args, num_classes, mean, std)
    digest = settings_digest(key_settings)
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the cache folder {cache}: {exc.strerror or exc}") from None

    out = TrackResult(
        epoch_source=ordered[0].epoch_source if ordered else "",
        settings=key_settings,
        cache_dir=str(cache) if cache is not None else None,
    )
    for item in ordered:
        sha = checkpoint_sha256(item.path)
        cache_file = cache / f"{sha[:24]}-{digest[:16]}.json" if cache is not None else None
        result = _read_cache(cache_file) if use_cache and cache_file is not None else None
        cached = result is not None
        if result is None:
            result = scan(
                str(item.path), data, config=config, arch=arch, arch_args=arch_args,
                num_classes=num_classes, mean=mean, std=std, progress=progress,
            )
            if cache_file is not None:
                write_atomic(cache_file, result.to_json())
        result.checkpoint.path = str(item.path)
        out.entries.append(TrackEntry(item.epoch, str(item.path), sha, cached, result))
        if progress is not None:
            progress("checkpoints", 1, len(ordered))

    series = out.series()
    out.correlations = [correlate(series, m, t) for m in MEASURES for t in TARGETS]
    if len(out.entries) < 3:
        out.notes.append(f"{len(out.entries)} checkpoint(s): rank correlations need at least 3")
    if any(c.kendall_tau is not None for c in out.correlations) and all(c.kendall_p is None for c in out.correlations):
        out.notes.append("p-values need scipy (pip install 'wciaudit[stats]'); the coefficients do not")
    if out.entries and all(e.result.metrics.gap_loss is None for e in out.entries):
        out.notes.append("no robust gap was measured (the data has one split?): nothing to correlate with")
    return out


def _cache_folder(
    sources: Sequence[str | os.PathLike[str]], ordered: list[RunCheckpoint], cache_dir: str | os.PathLike[str] | None
) -> Path | None:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    first = Path(os.fspath(sources[0])).expanduser()
    if first.is_dir() and not (first / "config.json").is_file():
        return first / CACHE_DIR_NAME
    return ordered[0].path.parent / CACHE_DIR_NAME if ordered else None


def _key_settings(
    config: ScanConfig, data: Any, arch: str | None, arch_args: Any, num_classes: int | None,
    mean: list[float] | None, std: list[float] | None,
) -> dict[str, Any]:
    """Everything that changes a scan's numbers, as plain JSON."""
    from .model import resolve_device

    cfg = config.to_dict()
    cfg["device"] = resolve_device(config.device).type  # cpu and cuda differ in the last bits
    data_text = None if data is None else os.fspath(data)
    return {
        "config": cfg,
        "data": _data_key(data_text),
        "arch": _arch_key(arch),
        "arch_args": json.loads(arch_args) if isinstance(arch_args, str) else arch_args,
        "num_classes": num_classes,
        "mean": mean,
        "std": std,
        "tool_version": __version__,
        "result_schema_version": SCHEMA_VERSION,
    }


def _read_cache(path: Path) -> AuditResult | None:
    """A cached result, or None when absent or unreadable (it is then scanned again)."""
    if not path.is_file():
        return None
    try:
        return AuditResult.load(path)
    except ConfigError:
        return None


# -- the page ------------------------------------------------------------------------------
#: Okabe-Ito, as the single-scan report uses
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
_TEMPLATE = "track.html.j2"
def render_track(result: TrackResult, title: str | None = None) -> str:
    """The run as one self-contained HTML page (plotly.js inline, no network request).

    Every string from a file name, metadata or the user is autoescaped by jinja2; the
    figure JSON has ``<``, ``>`` and ``&`` escaped so that it cannot end its ``<script>``.
    """
    env = template_environment()
    env.filters["coef"] = lambda v: "–" if v is None else f"{v:+.3f}"
    env.filters["pval"] = lambda v: "–" if v is None else ("< 0.0001" if v < 1e-4 else f"{v:.2g}")
    series = result.series()
    markers = result.markers()
    run_name = _run_name(result)
    return env.get_template(_TEMPLATE).render(
        title=title or f"WCI track: {run_name}",
        run=result,
        series=series,
        rows=_rows(result),
        markers=markers,
        correlations=_correlation_rows(result),
        verdicts=_verdicts(result),
        tau_null_sd=tau_null_sd(len(result.entries)),
        settings=_settings_rows(result),
        figures_json=script_json(_figures(result, series, markers)),
        plotly_js=inline_plotly(),
        tool_version=result.tool_version,
        measures=MEASURES,
    )


def write_track_page(result: TrackResult, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Render the page and write it atomically."""
    return write_atomic(path, render_track(result, title))


def _run_name(result: TrackResult) -> str:
    if not result.entries:
        return "empty run"
    parents = {Path(e.path).parent.name for e in result.entries}
    return parents.pop() if len(parents) == 1 and "" not in parents else Path(result.entries[0].path).name


def _rows(result: TrackResult) -> list[dict[str, Any]]:
    rows = []
    for e in result.entries:
        r = e.result
        rows.append({
            "epoch": e.epoch, "name": Path(e.path).name, "sha": e.sha256[:12], "cached": e.cached,
            "wci": r.wci, "wci_se": r.wci_se, "sum_frob_sq": _figure(r, "sum_frob_sq"),
            "sum_trace": r.sum_trace, "gap_loss": r.metrics.gap_loss, "gap_err": r.metrics.gap_err,
            "robust_acc_test": r.metrics.robust_acc_test, "robust_loss_test": r.metrics.robust_loss_test,
            "bound": r.pac_bayes.bound, "flags": sum(1 for la in r.layers if la.flag),
        })
    return rows


def _correlation_rows(result: TrackResult) -> list[dict[str, Any]]:
    rows = []
    for m, label in MEASURES.items():
        row: dict[str, Any] = {"measure": m, "label": label}
        for t in TARGETS:
            c = result.correlation(m, t)
            row[t] = c
        rows.append(row)
    return rows


def _verdicts(result: TrackResult) -> list[str]:
    """One plain sentence per gap: does WCI rank the checkpoints like the gap, and
    better than either ablation? Stated with the n it rests on."""
    out = []
    sd = tau_null_sd(len(result.entries))
    for t in TARGETS:
        w = result.correlation("wci", t)
        if w is None or w.kendall_tau is None:
            continue
        others = []
        for m in ("sum_frob_sq", "sum_trace"):
            c = result.correlation(m, t)
            if c is not None and c.kendall_tau is not None:
                rel = "above" if w.kendall_tau > c.kendall_tau else "below" if w.kendall_tau < c.kendall_tau else "equal to"
                others.append(f"{rel} {MEASURES[m]} ({c.kendall_tau:+.2f})")
        text = f"WCI vs {t}: Kendall tau {w.kendall_tau:+.2f}, Spearman rho {_signed(w.spearman_rho)} over n = {w.n} checkpoints"
        if others:
            text += "; WCI's tau is " + " and ".join(others)
        if sd is not None:
            text += f". With no association tau would scatter with SD {sd:.2f} at this n, so smaller differences are noise."
        out.append(text)
    return out


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def _settings_rows(result: TrackResult) -> list[tuple[str, str]]:
    s = result.settings
    cfg = s.get("config", {})
    rows = [
        ("data", str((s.get("data") or {}).get("spec") or "the dataset each checkpoint names")),
        ("arch", str((s.get("arch") or {}).get("spec") or (s.get("arch") or {}).get("class")
                     or ("a models.py file" if s.get("arch") else "from the checkpoints"))),
        ("attack", f"{cfg.get('attack')} {cfg.get('norm')} eps={format_eps(cfg.get('eps', 0.0))}, "
                   f"K={cfg.get('steps')}, alpha={fmt_num(cfg.get('step_size'))}, restarts={cfg.get('restarts')}"),
        ("samples", f"train {cfg.get('train_samples') or 'all'}, test {cfg.get('test_samples') or 'all'}, "
                    f"Hessian {cfg.get('hessian_samples')}"),
        ("curvature", f"{cfg.get('curvature')}, tol {cfg.get('tol')}, max probes {cfg.get('max_probes')}"),
        ("seed / device", f"{cfg.get('seed')} / {cfg.get('device')} {cfg.get('dtype')}"),
        ("epoch axis", result.epoch_source),
        ("cache", f"{result.cache_dir or 'off'} ({result.scanned} scanned now, "
                  f"{len(result.entries) - result.scanned} from the cache)"),
    ]
    return rows


def _figures(result: TrackResult, s: dict[str, list[Any]], markers: dict[str, Any]) -> dict[str, Any]:
    x = s["epoch"]
    hover = [svg_text(n) for n in s["checkpoint"]]
    shapes, notes = [], []
    for key, label, colour in (("best_robust_test_loss", "lowest robust test loss", PALETTE[3]),
                               ("wci_peak", "WCI peak", PALETTE[4])):
        m = markers.get(key)
        if m is None:
            continue
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": m["epoch"], "x1": m["epoch"],
                       "y0": 0, "y1": 1, "line": {"color": colour, "dash": "dot", "width": 2}})
        notes.append({"xref": "x", "yref": "paper", "x": m["epoch"], "y": 1.0, "yanchor": "bottom",
                      "text": label, "showarrow": False, "font": {"color": colour, "size": 11}})

    def layout(title: str, ytitle: str, **extra: Any) -> dict[str, Any]:
        base = {
            "title": {"text": title, "font": {"size": 14}},
            "xaxis": {"title": {"text": f"epoch ({result.epoch_source})"}, "zeroline": False},
            "yaxis": {"title": {"text": ytitle}, "zeroline": False},
            "margin": {"l": 60, "r": 60, "t": 50, "b": 50},
            "legend": {"orientation": "h", "y": -0.25},
            "shapes": shapes, "annotations": notes, "hovermode": "x unified",
            "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)",
        }
        base.update(extra)
        return base

    def line(name: str, y: list[Any], colour: str, se: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
        trace = {"type": "scatter", "mode": "lines+markers", "name": name, "x": x, "y": y,
                 "text": hover, "line": {"color": colour}, "marker": {"color": colour}}
        if se is not None and any(v for v in se if v is not None):
            trace["error_y"] = {"type": "data", "array": [v or 0 for v in se], "visible": True}
        trace.update(extra)
        return trace

    figs: dict[str, Any] = {}
    figs["wci"] = {"data": [line("WCI ± SE", s["wci"], PALETTE[0], s["wci_se"])],
                   "layout": layout("Weight-Curvature Index", "WCI")}
    figs["gap"] = {
        "data": [line("gap_loss = L_adv(T) - L_adv(S)", s["gap_loss"], PALETTE[3], s["gap_loss_se"]),
                 line("gap_err = acc_adv(S) - acc_adv(T)", s["gap_err"], PALETTE[1], s["gap_err_se"], yaxis="y2")],
        "layout": layout("Robust generalization gap", "gap_loss",
                         yaxis2={"title": {"text": "gap_err"}, "overlaying": "y", "side": "right", "zeroline": False}),
    }
    figs["acc"] = {
        "data": [line("robust train", s["robust_acc_train"], PALETTE[0]),
                 line("robust test", s["robust_acc_test"], PALETTE[3]),
                 line("clean train", s["clean_acc_train"], PALETTE[0], line={"color": PALETTE[0], "dash": "dash"}),
                 line("clean test", s["clean_acc_test"], PALETTE[3], line={"color": PALETTE[3], "dash": "dash"})],
        "layout": layout("Accuracy", "accuracy", yaxis={"title": {"text": "accuracy"}, "tickformat": ".0%"}),
    }
    figs["loss"] = {
        "data": [line("robust loss train L_adv(S)", s["robust_loss_train"], PALETTE[0]),
                 line("robust loss test L_adv(T)", s["robust_loss_test"], PALETTE[3]),
                 line("PAC-Bayes bound (2nd order, c*)", s["bound"], PALETTE[2])],
        "layout": layout("Robust loss and the bound", "cross-entropy"),
    }
    figs["ablation"] = {
        "data": [line("WCI", _scaled(s["wci"]), PALETTE[0]),
                 line("sum ||W||_F^2", _scaled(s["sum_frob_sq"]), PALETTE[1]),
                 line("sum Tr(H)", _scaled(s["sum_trace"]), PALETTE[2]),
                 line("gap_loss", _scaled(s["gap_loss"]), PALETTE[3], line={"color": PALETTE[3], "dash": "dash"}),
                 line("gap_err", _scaled(s["gap_err"]), PALETTE[4], line={"color": PALETTE[4], "dash": "dash"})],
        "layout": layout("WCI, its ablations and the gaps, each scaled to [0, 1]", "scaled (min 0, max 1)"),
    }
    names, rows = result.layer_terms()
    figs["layers"] = {
        "data": [{"type": "heatmap", "x": x, "y": [svg_text(n) for n in names], "z": rows,
                  "colorscale": "Viridis", "colorbar": {"title": {"text": "||W||·sqrt(Tr H)"}},
                  "hovertemplate": "epoch %{x}<br>%{y}<br>term %{z:.4g}<extra></extra>"}],
        "layout": {**layout("Per-layer WCI terms ||W_k||_F sqrt(Tr H_k)", "layer"),
                   "yaxis": {"autorange": "reversed", "automargin": True}, "hovermode": "closest",
                   "height": max(320, 60 + 28 * len(names))},
    }
    return figs


def _scaled(values: list[Any]) -> list[float | None]:
    known = [v for v in values if v is not None and math.isfinite(v)]
    if not known:
        return [None] * len(values)
    lo, hi = min(known), max(known)
    span = hi - lo
    return [None if v is None else (0.5 if span == 0 else (v - lo) / span) for v in values]
