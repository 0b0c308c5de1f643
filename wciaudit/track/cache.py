"""The track cache: one AuditResult JSON per (checkpoint sha256, settings digest).

Each scan is stored under a key made of the checkpoint's sha256 and a digest of every
setting that changes the numbers, written atomically as soon as it is done. Re-running
after a new epoch scans only the new file; an interrupted run keeps what it finished.

The cache lives in a folder the user owns, not beside the checkpoints (a run folder may
be read-only or shared): ``$WCIAUDIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/wciaudit``, else
``~/.cache/wciaudit`` (``%LOCALAPPDATA%\\wciaudit\\cache`` on Windows), one sub-folder per
run folder named after it and the hash of its resolved path, so two runs never share
one. ``--cache DIR`` puts the entries in ``DIR`` itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .._version import __version__
from ..config import LoadOptions, ScanConfig
from ..errors import ConfigError
from ..result import SCHEMA_VERSION, AuditResult
from .files import RunCheckpoint

#: the environment variable that sets the cache's root folder
CACHE_ENV = "WCIAUDIT_CACHE_DIR"


def settings_digest(settings: dict[str, Any]) -> str:
    """Digest of the settings that change a scan's numbers (canonical JSON, sha256)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def data_key(spec: str | None) -> dict[str, Any] | None:
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


def arch_key(spec: str | None) -> dict[str, Any] | None:
    """An arch spec as a cache key: a ``models.py[:Class]`` file by its content, so a
    relative or absolute path to the same file gives the same key and an edited model
    definition does not."""
    if spec is None:
        return None
    path_text, _, class_name = (
        spec.rpartition(":") if spec.count(":") and not Path(spec).is_file() else (spec, "", "")
    )
    p = Path(path_text).expanduser()
    if path_text.endswith(".py") and p.is_file():
        return {
            "file_sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            "class": class_name or None,
        }
    return {"spec": spec}


def cache_root() -> Path:
    """The folder that holds every run's cache: ``$WCIAUDIT_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/wciaudit`` (an absolute XDG path only, as the XDG spec says), else
    ``%LOCALAPPDATA%\\wciaudit\\cache`` on Windows, else ``~/.cache/wciaudit``."""
    own = os.environ.get(CACHE_ENV)
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "wciaudit"
    local = os.environ.get("LOCALAPPDATA")
    if os.name == "nt" and local:
        return Path(local) / "wciaudit" / "cache"
    return Path.home() / ".cache" / "wciaudit"


def run_folder(
    sources: Sequence[str | os.PathLike[str]], ordered: list[RunCheckpoint]
) -> Path | None:
    """The folder a run is known by: the run folder given, else the folder of its first
    checkpoint (a glob or a list of files)."""
    first = Path(os.fspath(sources[0])).expanduser()
    if first.is_dir() and not (first / "config.json").is_file():
        return first
    return ordered[0].path.parent if ordered else None


def cache_folder(
    sources: Sequence[str | os.PathLike[str]],
    ordered: list[RunCheckpoint],
    cache_dir: str | os.PathLike[str] | None,
) -> Path | None:
    """Where this run's entries go: ``cache_dir`` when given, else the run's own folder
    under :func:`cache_root`, named ``<run folder name>-<sha256 of its resolved path>``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    folder = run_folder(sources, ordered)
    if folder is None:
        return None
    resolved = str(folder.resolve())
    digest = hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in folder.resolve().name)
    return cache_root() / "track" / f"{name[:40] or 'run'}-{digest}"


def key_settings(config: ScanConfig, data: Any, options: LoadOptions) -> dict[str, Any]:
    """Everything that changes a scan's numbers, as plain JSON: the config, the data and
    every checkpoint-loading option (the arch by :func:`arch_key`)."""
    from ..model import resolve_device

    cfg = config.to_dict()
    cfg["device"] = resolve_device(config.device).type  # cpu and cuda differ in the last bits
    cfg.pop("threads", None)  # chosen by the machine's load: a busy run must not miss the cache
    data_text = None if data is None else os.fspath(data)
    return {
        "config": cfg,
        "data": data_key(data_text),
        **asdict(options),
        "arch": arch_key(options.arch),
        "tool_version": __version__,
        "result_schema_version": SCHEMA_VERSION,
    }


def read_cache(path: Path) -> AuditResult | None:
    """A cached result, or None when absent, unreadable or incomplete (a stopped scan):
    the checkpoint is then scanned again."""
    if not path.is_file():
        return None
    try:
        result = AuditResult.load(path)
    except ConfigError:
        return None
    return result if result.complete else None
