"""The entry point: one ``spec`` (a string or a dict of arrays) -> :class:`Splits`."""

from __future__ import annotations

import importlib.resources
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .arrays import arrays_from_mapping, splits_from_arrays
from .cifar import load_cifar
from .image_folder import load_image_folder
from .npz import read_npz
from .splits import LoadOptions, Splits

SAMPLE_NAMES = ("sample", "digits")
"""Names that mean the shipped sample dataset (UCI digits, 8x8 grey, 10 classes)."""

ACCEPTED_FORMS = (
    "sample, file.npz (x_train/y_train and/or x_test/y_test), "
    "DIR (ImageFolder with train/ and test/ or val/), cifar10:DIR, cifar100:DIR"
)

_IN_MEMORY = "data arrays"


def load_options(
    lo: float,
    hi: float,
    train_samples: int | None,
    test_samples: int | None,
    seed: int,
    max_bytes: int,
) -> LoadOptions:
    """Check and bundle the options every source needs.

    Raises:
        ConfigError: if ``lo >= hi`` (or either is not finite) or a sample count is not a
            positive integer.
    """
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"the data range needs finite lo < hi, got [{lo}, {hi}]")
    for option, value in (("train_samples", train_samples), ("test_samples", test_samples)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise ConfigError(f"{option} must be a positive integer, got {value!r}")
    return LoadOptions(
        float(lo),
        float(hi),
        None if train_samples is None else int(train_samples),
        None if test_samples is None else int(test_samples),
        int(seed),
        int(max_bytes),
    )


def load_data(
    spec: str | os.PathLike[str] | Mapping[str, Any],
    *,
    data_config: dict[str, Any] | None = None,
    lo: float = 0.0,
    hi: float = 1.0,
    train_samples: int | None = None,
    test_samples: int | None = None,
    seed: int = 0,
    max_bytes: int = 8 * 2**30,
) -> Splits:
    """Load a dataset as float32 tensors in [lo, hi]; nothing is ever downloaded.

    Image sources (the sample, ImageFolder, CIFAR) hold values in [0, 1] and are mapped
    linearly to [lo, hi]; npz and in-memory float data must already lie in [lo, hi],
    uint8 data is mapped from [0, 255]. Subsets are stratified by class
    (:func:`~wciaudit.data.stratified_subset`) with ``seed`` for train and ``seed + 1``
    for test, and are chosen before anything large is decoded. The array layout is
    described in docs/data.md.

    Args:
        spec: ``sample``/``digits``, ``path/file.npz``, an ImageFolder ``DIR``,
            ``cifar10:DIR`` or ``cifar100:DIR``; or a dict with ``x_train``, ``y_train``,
            ``x_test``, ``y_test`` (either split may be absent) and optionally
            ``classes``, as numpy arrays or torch tensors.
        data_config: timm data config of the model (``input_size`` (C, H, W),
            ``interpolation``, ``crop_pct``, ``crop_mode``). ImageFolder sources are
            transformed to it, with bilinear interpolation and ``crop_pct`` 1.0 (no
            crop) where it does not say, as on the command line; npz and in-memory
            (N, H, W) or (N, H, W, C) data is made channels-first when ``input_size``
            asks for it (with a note in ``Splits.notes``). Without an ``input_size`` images are read at their own
            size, which must then be the same for all of them.
        lo: lower end of the data range.
        hi: upper end of the data range.
        train_samples: keep at most this many train examples (``None``: all).
        test_samples: keep at most this many test examples (``None``: all).
        seed: seed of the subset choice.
        max_bytes: refuse to build float32 tensors larger than this many bytes in all.

    Returns:
        The :class:`Splits`; ``n_train_total``/``n_test_total`` are the sizes before
        subsetting.

    Raises:
        DataError: if the source is missing, malformed, out of range, too large or of an
            unknown form, or its labels are not 0 .. C-1.
        ConfigError: if ``lo >= hi`` or a sample count is not positive.

    Example:
        >>> splits = load_data("sample", train_samples=100, test_samples=50)
        >>> splits.input_shape, len(splits.y_train), splits.n_train_total
        ([1, 8, 8], 100, 1000)
    """
    opts = load_options(lo, hi, train_samples, test_samples, seed, max_bytes)
    input_size = None if data_config is None else data_config.get("input_size")
    if isinstance(spec, Mapping):
        arrays = arrays_from_mapping(spec, _IN_MEMORY)
        return splits_from_arrays(
            arrays,
            opts,
            where=_IN_MEMORY,
            name="arrays",
            origin="arrays given in memory",
            input_size=input_size,
        )
    return _load_named(str(os.fspath(spec)).strip(), data_config, opts)


def _load_named(text: str, data_config: dict[str, Any] | None, opts: LoadOptions) -> Splits:
    """Dispatch on the form of a dataset string (see :func:`load_data`)."""
    if not text:
        raise DataError(f"no dataset given; accepted forms: {ACCEPTED_FORMS}")
    lowered = text.lower()
    input_size = None if data_config is None else data_config.get("input_size")
    if lowered in SAMPLE_NAMES:
        resource = importlib.resources.files("wciaudit") / "samples" / "digits.npz"
        with importlib.resources.as_file(resource) as path:
            # the sample is in [0, 1] whatever the model's range, and already (N, 1, 8, 8)
            return splits_from_arrays(
                read_npz(Path(path), opts),
                opts,
                where=str(path),
                name="digits",
                origin="shipped sample (UCI digits, 8x8)",
                native_range=(0.0, 1.0),
            )
    for prefix, cifar_name in (("cifar100:", "cifar100"), ("cifar10:", "cifar10")):
        if lowered.startswith(prefix):
            return load_cifar(cifar_name, text[len(prefix) :], opts)
    path = Path(text).expanduser()
    if lowered.endswith(".npz"):
        arrays = read_npz(path, opts)
        return splits_from_arrays(
            arrays,
            opts,
            where=str(path),
            name=f"npz:{text}",
            origin=f"npz file {text}",
            input_size=input_size,
        )
    if path.is_dir():
        return load_image_folder(path, data_config, opts, name=f"imagefolder:{text}")
    if path.exists():
        raise DataError(
            f"{text} is not a dataset form wciaudit reads; accepted forms: {ACCEPTED_FORMS}"
        )
    raise DataError(
        f"unknown dataset {text!r}: not a shipped dataset and no such file or folder; "
        f"accepted forms: {ACCEPTED_FORMS}"
    )
