"""A run's checkpoint files: find them, read their epoch, order them, hash them.

Ordering: by the ``epoch`` metadata of every checkpoint when each one has it, else by a
natural sort of the file names (``epoch_2`` before ``epoch_10``).

What a checkpoint file says about itself (its epoch, its sha256, which suffixes are
checkpoints) is read here and nowhere else in ``track``.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoints import CHECKPOINT_SUFFIXES, read_epoch
from ..errors import ConfigError

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "RunCheckpoint",
    "find_checkpoints",
    "natural_key",
    "order_checkpoints",
    "read_epoch",
    "run_stem",
]


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
                p
                for p in path.iterdir()
                if not p.name.startswith(".")
                and (
                    (p.is_file() and p.name.endswith(CHECKPOINT_SUFFIXES))
                    or (p.is_dir() and (p / "config.json").is_file())
                )
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
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part.lower())
        for part in _DIGITS.split(name)
        if part
    )


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
    numbers = [
        _DIGITS.findall(p.name.removesuffix(p.suffix) if p.is_file() else p.name) for p in by_name
    ]
    if by_name and all(numbers):
        return [
            RunCheckpoint(p, float(n[-1]), "file name")
            for p, n in zip(by_name, numbers, strict=True)
        ]
    return [RunCheckpoint(p, float(i + 1), "position") for i, p in enumerate(by_name)]


def run_stem(sources: Sequence[str | os.PathLike[str]]) -> str:
    """The name a run's default outputs take (``<stem>.track.json``): the run folder's
    name; for a glob, the last part of the pattern without wildcards (the folder of
    ``run/epoch_[13].safetensors`` is ``run``); for checkpoint files, the first one's
    name without its suffix. Never a wildcard, never empty."""
    text = os.fspath(sources[0]).rstrip("/\\") if sources else ""
    path = Path(text or ".").expanduser()
    if glob.has_magic(text):
        plain = [p for p in path.parts[:-1] if not glob.has_magic(p)]
        name = plain[-1] if plain else ""
        if name in ("", ".", "..") or name == path.anchor:
            name = Path(os.path.join(*plain) if plain else ".").resolve().name
    elif path.is_file():
        name = path.name.removesuffix(path.suffix)
    else:
        name = path.name if path.name not in ("", ".", "..") else path.resolve().name
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return name or "run"
