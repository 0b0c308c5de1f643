"""Track a training run: scan every checkpoint, order by epoch, relate WCI to the robust gap.

The paper's central observation (Xu & Zhang, arXiv 2410.07719) is that the
Weight-Curvature Index moves with the robust generalization gap over training, i.e.
with robust overfitting. :func:`track` scans every checkpoint of a run with one data
set and one :class:`~wciaudit.config.ScanConfig` (through a cache, :mod:`.cache`),
orders them by epoch (:mod:`.files`) and returns a :class:`~.result.TrackResult`.

Example:
    >>> from wciaudit.config import LoadOptions
    >>> t = track(["sample_models/run_digits_cnn"], "sample", eps="0.1", train_samples=300,
    ...           options=LoadOptions(arch="sample_models/digits_cnn.py"))  # doctest: +SKIP
    >>> t.correlation("wci", "gap_loss").kendall_tau  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ..checkpoints import file_sha256
from ..config import LoadOptions, ScanConfig, config_from_settings
from ..errors import CheckpointError, ConfigError
from ..formatting import one_line
from ..pipeline import scan
from ..result import AuditResult, write_atomic
from .cache import cache_folder, key_settings, read_cache, settings_digest
from .files import RunCheckpoint, find_checkpoints, order_checkpoints
from .result import MEASURES, TARGETS, SkippedCheckpoint, TrackEntry, TrackResult, correlate

#: progress(stage, advance, total): stage "checkpoints" after each checkpoint (done or
#: read from the cache), then the stages of :func:`wciaudit.scan` for the one running
TrackProgress = Callable[[str, int, "int | None"], None]


def track(
    sources: Sequence[str | os.PathLike[str]],
    data: str | os.PathLike[str] | None = None,
    *,
    config: ScanConfig | None = None,
    options: LoadOptions | None = None,
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
            The threat model is resolved per checkpoint as :func:`wciaudit.scan` does it
            (flag > the checkpoint's metadata ``eps`` / ``norm`` > default): ``eps`` or
            ``norm`` left None is taken from each checkpoint (and is None in the cache
            key, so a later run that gives the value does not read these results); every
            result's ``config["threat_model_source"]`` says where it came from.
        options: how to read every checkpoint (arch, arch_args, num_classes, mean,
            std, input_size), as for :func:`wciaudit.scan`.
        cache_dir: where the per-checkpoint results live (default: a folder for this
            run under :func:`~wciaudit.track.cache.cache_root`, ``$WCIAUDIT_CACHE_DIR``,
            ``$XDG_CACHE_HOME/wciaudit`` or ``~/.cache/wciaudit``; the run folder is
            never written to).
        use_cache: False scans everything again (and refreshes the cache).
        progress: ``progress(stage, advance, total)``, see :data:`TrackProgress`.

    Returns:
        The :class:`TrackResult`, entries in epoch order.

    Raises:
        ConfigError, DataError: one line (settings and data are shared: the run ends).
        CheckpointError: when no checkpoint could be scanned; one that cannot be read
        or built (a truncated file) is otherwise skipped, in ``skipped`` with its reason.
        Checkpoints scanned before a failure stay in the cache.
    """
    config = config_from_settings(config, settings)
    ordered = order_checkpoints(find_checkpoints(sources))
    cache = cache_folder(sources, ordered, cache_dir)
    options = options or LoadOptions()
    key = key_settings(config, data, options)
    digest = settings_digest(key)
    if cache is not None:
        _make_folder(cache)
    out = TrackResult(
        epoch_source=ordered[0].epoch_source if ordered else "",
        settings=key,
        cache_dir=str(cache) if cache is not None else None,
    )
    scan_checkpoint = partial(scan, data=data, config=config, options=options, progress=progress)
    for item in ordered:
        sha = file_sha256(item.path)
        ident = _checkpoint_ident(item.path, sha)
        cache_file = cache / f"{ident[:24]}-{digest[:16]}.json" if cache is not None else None
        result = read_cache(cache_file) if use_cache and cache_file is not None else None
        cached = result is not None
        if result is None:
            result = _scan_or_skip(item, out, scan_checkpoint)
            if result is not None and cache_file is not None:
                write_atomic(cache_file, result.to_json())
        if result is not None:
            result.checkpoint.path = str(item.path)
            out.entries.append(TrackEntry(item.epoch, str(item.path), sha, cached, result))
        if progress is not None:
            progress("checkpoints", 1, len(ordered))
    if not out.entries and out.skipped:
        first = out.skipped[0]
        raise CheckpointError(
            f"no checkpoint of the run could be scanned; {Path(first.path).name}: {first.reason}"
        )
    _correlate_run(out)
    _note_threat_models(out)
    return out


def _scan_or_skip(
    item: RunCheckpoint, out: TrackResult, scan_checkpoint: Callable[[str], AuditResult]
) -> AuditResult | None:
    """The checkpoint's scan; None, with the file and the reason in ``out.skipped``, for
    a checkpoint that cannot be read or built. One such file (a truncated last epoch
    still being written) must not cost the run; the command's exit code tells CI."""
    try:
        return scan_checkpoint(str(item.path))
    except CheckpointError as exc:
        out.skipped.append(SkippedCheckpoint(item.epoch, str(item.path), one_line(str(exc))))
        return None


def _checkpoint_ident(path: str | os.PathLike[str], sha: str) -> str:
    """The checkpoint's cache identity: its weights' sha256, with a timm folder's config.

    A timm folder's ``config.json`` builds the model too, so it joins the key.
    """
    config_json = Path(path) / "config.json"
    if not config_json.is_file():
        return sha
    return hashlib.sha256(sha.encode() + config_json.read_bytes()).hexdigest()


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the cache folder {folder}: {exc.strerror or exc}"
        ) from None


def _correlate_run(out: TrackResult) -> None:
    """Fill in the correlations of every measure with every gap, and notes on what is missing."""
    series = out.series()
    out.correlations = [correlate(series, m, t) for m in MEASURES for t in TARGETS]
    if len(out.entries) < 3:
        out.notes.append(f"{len(out.entries)} checkpoint(s): rank correlations need at least 3")
    coefficients = any(c.kendall_tau is not None for c in out.correlations)
    if coefficients and all(c.kendall_p is None for c in out.correlations):
        out.notes.append(
            "p-values need scipy (pip install 'wciaudit[stats]'); the coefficients do not"
        )
    if out.entries and all(e.result.metrics.gap_loss is None for e in out.entries):
        out.notes.append(
            "no robust gap was measured (the data has one split?): nothing to correlate with"
        )


def _note_threat_models(out: TrackResult) -> None:
    """A note where the checkpoints were attacked under different threat models (their
    metadata disagree), which makes their figures incomparable."""
    seen = {(e.result.config.get("norm"), e.result.config.get("eps_text")) for e in out.entries}
    if len(seen) > 1:
        models = ", ".join(f"{norm} eps {eps}" for norm, eps in sorted(seen, key=str))
        out.notes.append(
            f"the checkpoints were attacked under different threat models ({models}), "
            "from their metadata: their figures are not comparable; pass --eps and --norm"
        )
