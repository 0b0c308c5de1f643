"""CIFAR-10 / CIFAR-100 from torchvision's python batches under a folder; never downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .arrays import check_size, one_line
from .splits import SPLIT_NAMES, LoadOptions, Splits, assemble, subset_indices, subset_words
from .transform import range_words, to_range

_PRETTY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def _read_batches(name: str, root_text: str) -> dict[str, Any]:
    """The torchvision dataset of each split, or a DataError that says how to fetch them."""
    from torchvision import datasets

    if not root_text.strip():
        raise DataError(f"{name}: give the folder holding the CIFAR files, e.g. {name}:DIR")
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = Path(root_text).expanduser()
    # accept the batches folder itself as well as the folder holding it
    if root.name == cls.base_folder and not (root / cls.base_folder).is_dir():
        root = root.parent
    loaded = {}
    for split in SPLIT_NAMES:
        try:
            loaded[split] = cls(root=str(root), train=(split == "train"), download=False)
        except RuntimeError:
            raise DataError(
                f"{_PRETTY[name]} files not found (or corrupted) under {root_text} (expected "
                f"{cls.base_folder}/ there); wciaudit never downloads: fetch them once with "
                f"torchvision.datasets.{cls.__name__}(root=DIR, download=True)"
            ) from None
        except (OSError, EOFError, ValueError, KeyError) as exc:
            raise DataError(
                f"cannot read the {_PRETTY[name]} {split} files under {root_text}: {one_line(exc)}"
            ) from None
    return loaded


def load_cifar(name: str, root_text: str, opts: LoadOptions) -> Splits:
    """CIFAR as (N, 3, 32, 32) float32 in [lo, hi] (uint8 pixels mapped from [0, 255]).

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root_text: the folder holding ``cifar-10-batches-py/`` (or that folder itself).
        opts: data range, subset sizes and seed, size limit.
    """
    pretty = _PRETTY[name]
    loaded = _read_batches(name, root_text)
    labels = {s: torch.as_tensor(loaded[s].targets, dtype=torch.int64) for s in SPLIT_NAMES}
    indices = {
        s: subset_indices(labels[s], opts.samples(s), opts.subset_seed(s)) for s in SPLIT_NAMES
    }
    counts = [
        (labels[s].numel() if indices[s] is None else indices[s].numel(), (3, 32, 32))
        for s in SPLIT_NAMES
    ]
    check_size(f"{pretty} under {root_text}", counts, opts.max_bytes)

    parts = {}
    for s in SPLIT_NAMES:
        data = loaded[s].data  # uint8 (N, 32, 32, 3)
        y = labels[s]
        if indices[s] is not None:
            data, y = data[indices[s].numpy()], y[indices[s]]
        x = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).float().div_(255.0)
        parts[s] = (to_range(x.contiguous(), (0.0, 1.0), opts.lo, opts.hi), y, len(labels[s]))
    sizes = ", ".join(f"{s} {subset_words(len(parts[s][1]), parts[s][2])}" for s in SPLIT_NAMES)
    source = (
        f"{pretty} python batches under {root_text}: {sizes}; uint8 "
        f"{range_words((0.0, 255.0), opts.lo, opts.hi)}"
    )
    num_classes = len(loaded["train"].classes)
    return assemble(name, parts, num_classes=num_classes, source=source, opts=opts)
