"""``.npz`` archives (and the shipped sample, which is one): read without pickle, sizes
checked from the array headers before anything large is read.

The arrays are then checked and converted by :mod:`wciaudit.data.arrays`, which describes
the layout (as does docs/data.md).
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .arrays import check_size, gib, one_line, present_splits
from .splits import LoadOptions


def _npz_header(npz: Any, key: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of one array of an npz archive from its header, without reading it."""
    try:
        with npz.zip.open(f"{key}.npy") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return None
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _read_array(npz: Any, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(npz[key])
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise DataError(
                f"{path}: array {key} holds Python objects; wciaudit reads numeric arrays only "
                "and never unpickles"
            ) from None
        raise DataError(f"{path}: cannot read array {key}: {one_line(exc)}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read array {key}: {one_line(exc)}") from None


def _open_npz(path: Path) -> Any:
    """``np.load`` of an archive, after refusing what is not one (never with pickle)."""
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an .npz file")
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        with path.open("rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {one_line(exc)}") from None
    single = f"{path} is a single .npy array, not an .npz archive with x_train/y_train"
    if magic == b"\x93NUMPY":
        raise DataError(single)
    if not zipfile.is_zipfile(path):
        # np.load would guess a pickle here and suggest loading it unsafely
        raise DataError(
            f"cannot read {path} as an .npz archive: not a zip file of .npy arrays "
            "(write one with numpy.savez)"
        )
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path} as an .npz archive: {one_line(exc)}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(single)
    return npz


def _check_stored_sizes(npz: Any, present: list[str], path: Path, opts: LoadOptions) -> None:
    """Refuse an oversized archive from its headers, before its arrays are read."""
    headers = {split: _npz_header(npz, f"x_{split}") for split in present}
    counts = []
    for split, header in headers.items():
        if header is not None:
            n = header[0][0] if header[0] else 0
            limit = opts.samples(split)
            counts.append((n if limit is None else min(n, limit), header[0][1:]))
    check_size(str(path), counts, opts.max_bytes)
    for split, header in headers.items():
        # the stored array is read whole, even when only a subset is kept
        stored = 0 if header is None else math.prod(header[0]) * header[1].itemsize
        if stored > opts.max_bytes:
            raise DataError(
                f"{path}: x_{split} takes {gib(stored)} as stored, over the limit of "
                f"{gib(opts.max_bytes)}; save a smaller file"
            )


def read_npz(path: Path, opts: LoadOptions) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive that wciaudit uses, read without pickle.

    Raises:
        DataError: if the file is missing, not an archive, lacks a complete split, would
            exceed ``opts.max_bytes``, or holds Python objects.
    """
    with _open_npz(path) as npz:
        keys = set(npz.files)
        present = present_splits(keys, str(path))
        _check_stored_sizes(npz, present, path, opts)
        wanted = [f"{c}_{s}" for s in present for c in ("x", "y")]
        wanted += ["classes"] if "classes" in keys else []
        return {key: _read_array(npz, key, path) for key in wanted}
