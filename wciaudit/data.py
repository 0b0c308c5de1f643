"""Dataset sources -> tensors in the data range [lo, hi] (SPEC: "The model under audit").

A dataset is named by one string, ``spec``:

- ``sample`` or ``digits``: the shipped UCI digits (8x8 grey, 1000 train / 797 test);
- ``path/file.npz``: arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` (either split
  may be absent) and optionally ``classes``; read without pickle;
- ``DIR``: an ImageFolder tree ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (or
  ``DIR/val/...``), decoded with the model's timm eval transform, without normalisation;
- ``cifar10:DIR`` / ``cifar100:DIR``: torchvision's CIFAR python batches under ``DIR``.

Nothing is ever downloaded. Every failure is a :class:`~wciaudit.errors.DataError` with a
one-line message that names the file and the problem.

Example:
    >>> splits = load_data("sample", train_samples=100, test_samples=50)
    >>> splits.input_shape, len(splits.y_train), splits.n_train_total
    ([1, 8, 8], 100, 1000)
"""

from __future__ import annotations

import importlib.resources
import math
import os
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError, DataError

__all__ = ["SAMPLE_NAMES", "Splits", "fit_to_model", "load_data", "stratified_subset"]

SAMPLE_NAMES = ("sample", "digits")
"""Names that mean the shipped sample dataset (UCI digits, 8x8 grey, 10 classes)."""

ACCEPTED_FORMS = (
    "sample, file.npz (x_train/y_train and/or x_test/y_test), "
    "DIR (ImageFolder with train/ and test/ or val/), cifar10:DIR, cifar100:DIR"
)

_GIB = 2**30
_FLOAT32_BYTES = 4
_IMAGE_WORKERS = 8  # threads decoding ImageFolder files; PIL releases the GIL while decoding


@dataclass
class Splits:
    """A train and a test split as float32 tensors in [lo, hi], with where they came from.

    Attributes:
        name: short dataset name, e.g. ``"digits"``, ``"cifar10"``, ``"npz:file.npz"``.
        x_train: float32 inputs, shape (N, C, H, W) for images or (N, ...) for npz data,
            values in [lo, hi]; ``None`` when the source has no train split.
        y_train: int64 class labels, shape (N,).
        x_test: as ``x_train``, for the test split.
        y_test: as ``y_train``, for the test split.
        num_classes: number of classes (labels are 0 .. num_classes - 1).
        source: one sentence saying where the data came from and how it was scaled.
        n_train_total: train size before subsetting (``None`` without a train split).
        n_test_total: test size before subsetting (``None`` without a test split).
        lo: lower end of the data range.
        hi: upper end of the data range.
    """

    name: str
    x_train: torch.Tensor | None
    y_train: torch.Tensor | None
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    num_classes: int
    source: str
    n_train_total: int | None
    n_test_total: int | None
    lo: float = 0.0
    hi: float = 1.0

    @property
    def input_shape(self) -> list[int]:
        """Per-example shape, e.g. ``[1, 8, 8]`` (taken from whichever split exists)."""
        x = self.x_train if self.x_train is not None else self.x_test
        return [] if x is None else [int(s) for s in x.shape[1:]]

    @property
    def has_train(self) -> bool:
        """Whether a train split is present."""
        return self.x_train is not None

    @property
    def has_test(self) -> bool:
        """Whether a test split is present."""
        return self.x_test is not None


# ---------------------------------------------------------------------------------------
# subsetting
# ---------------------------------------------------------------------------------------


def stratified_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Pick ``n`` indices of ``y`` so that every class keeps its share (seeded).

    Class c with ``count_c`` of the N labels gets ``floor(n * count_c / N)`` examples, and
    the ``n - sum(floor(...))`` left over go one each to the classes with the largest
    remainders (ties to the smaller label), so the total is exactly ``n`` and every class
    is within 1 of its proportional share. Within a class the examples are a uniformly
    random choice from a local ``torch.Generator`` seeded with ``seed``: the same
    ``(y, n, seed)`` gives the same indices, and torch's global seed is untouched.

    Args:
        y: integer labels, shape (N,).
        n: number of indices wanted; ``n >= N`` keeps all of them.
        seed: seed of the random choice within each class.

    Returns:
        int64 indices into ``y``, sorted ascending, shape (min(n, N),).

    Raises:
        ValueError: if ``n`` is negative or ``y`` is not one-dimensional.

    Example:
        >>> y = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
        >>> torch.bincount(y[stratified_subset(y, 5, seed=0)]).tolist()
        [3, 2]
    """
    if y.dim() != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {list(y.shape)}")
    if n < 0:
        raise ValueError(f"the subset size must be non-negative, got {n}")
    total = int(y.numel())
    if n >= total:
        return torch.arange(total, dtype=torch.int64)
    classes, counts = torch.unique(y, sorted=True, return_counts=True)
    exact = [n * int(c) / total for c in counts]
    quota = [math.floor(q) for q in exact]
    left = n - sum(quota)
    # stable sort on the remainder: equal remainders go to the smaller label first
    by_remainder = sorted(range(len(exact)), key=lambda i: -(exact[i] - quota[i]))
    for i in by_remainder[:left]:
        quota[i] += 1
    generator = torch.Generator().manual_seed(int(seed))
    chosen = []
    for cls, k in zip(classes.tolist(), quota, strict=True):
        members = torch.nonzero(y == cls, as_tuple=False).flatten()
        order = torch.randperm(members.numel(), generator=generator)
        chosen.append(members[order[:k]])
    return torch.sort(torch.cat(chosen)).values.to(torch.int64)


def _subset_indices(y: torch.Tensor, n: int | None, seed: int) -> torch.Tensor | None:
    """Indices of the stratified subset, or ``None`` when the whole split is kept."""
    if n is None or n >= y.numel():
        return None
    return stratified_subset(y, n, seed)


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------


def load_data(
    spec: str,
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
    linearly to [lo, hi]; npz float data must already lie in [lo, hi], npz uint8 data is
    mapped from [0, 255]. Subsets are stratified by class (:func:`stratified_subset`)
    with ``seed`` for train and ``seed + 1`` for test, and are chosen before anything
    large is decoded.

    Args:
        spec: ``sample``/``digits``, ``path/file.npz``, an ImageFolder ``DIR``,
            ``cifar10:DIR`` or ``cifar100:DIR``.
        data_config: timm data config of the model (``input_size`` (C, H, W),
            ``interpolation``, ``crop_pct``, ``crop_mode``), used by ImageFolder sources
            only; without an ``input_size`` images are read at their own size, which
            must then be the same for all of them.
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
            unknown form.
        ConfigError: if ``lo >= hi`` or a sample count is not positive.
    """
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"the data range needs finite lo < hi, got [{lo}, {hi}]")
    for option, value in (("train_samples", train_samples), ("test_samples", test_samples)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise ConfigError(f"{option} must be a positive integer, got {value!r}")
    opts = _Options(
        float(lo),
        float(hi),
        None if train_samples is None else int(train_samples),
        None if test_samples is None else int(test_samples),
        int(seed),
        int(max_bytes),
    )

    text = str(spec).strip()
    if not text:
        raise DataError(f"no dataset given; accepted forms: {ACCEPTED_FORMS}")
    lowered = text.lower()
    if lowered in SAMPLE_NAMES:
        resource = importlib.resources.files("wciaudit") / "samples" / "digits.npz"
        with importlib.resources.as_file(resource) as path:
            return _load_npz(
                Path(path),
                opts,
                name="digits",
                origin="shipped sample (UCI digits, 8x8)",
                native_range=(0.0, 1.0),
            )
    for prefix, cifar_name in (("cifar100:", "cifar100"), ("cifar10:", "cifar10")):
        if lowered.startswith(prefix):
            return _load_cifar(cifar_name, text[len(prefix) :], opts)
    path = Path(text).expanduser()
    if lowered.endswith(".npz"):
        return _load_npz(path, opts, name=f"npz:{text}", origin=f"npz file {text}")
    if path.is_dir():
        return _load_image_folder(path, data_config, opts, name=f"imagefolder:{text}")
    if path.exists():
        raise DataError(
            f"{text} is not a dataset form wciaudit reads; accepted forms: {ACCEPTED_FORMS}"
        )
    raise DataError(
        f"unknown dataset {text!r}: not a shipped dataset and no such file or folder; "
        f"accepted forms: {ACCEPTED_FORMS}"
    )


@dataclass(frozen=True)
class _Options:
    lo: float
    hi: float
    train_samples: int | None
    test_samples: int | None
    seed: int
    max_bytes: int


def _check_size(label: str, counts: Sequence[tuple[int, Sequence[int]]], max_bytes: int) -> None:
    """Refuse when the float32 tensors would exceed ``max_bytes`` (counts: (N, shape))."""
    needed = sum(n * math.prod(shape) * _FLOAT32_BYTES for n, shape in counts)
    if needed > max_bytes:
        raise DataError(
            f"{label} would take {_gib(needed)} as float32, over the limit of "
            f"{_gib(max_bytes)}; use --train-samples/--test-samples to audit a subset"
        )


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / _GIB:.3g} GiB"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _to_range(x: torch.Tensor, native: tuple[float, float], lo: float, hi: float) -> torch.Tensor:
    """Map values linearly from the ``native`` range to [lo, hi] (no copy when equal)."""
    if native == (lo, hi):
        return x
    a, b = native
    return ((x - a) * ((hi - lo) / (b - a)) + lo).clamp_(lo, hi)


def _range_words(native: tuple[float, float], lo: float, hi: float) -> str:
    if native == (lo, hi):
        return f"values in [{lo:g}, {hi:g}]"
    return f"values mapped from [{native[0]:g}, {native[1]:g}] to [{lo:g}, {hi:g}]"


def _subset_words(kept: int, total: int) -> str:
    return f"{total}" if kept == total else f"{kept} of {total} (stratified subset)"


# ---------------------------------------------------------------------------------------
# npz files (and the shipped sample)
# ---------------------------------------------------------------------------------------

_SPLITS = ("train", "test")


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
        raise DataError(f"{path}: cannot read array {key}: {_one_line(exc)}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read array {key}: {_one_line(exc)}") from None


def _labels(y: np.ndarray, key: str, n: int, path: Path) -> torch.Tensor:
    """Validate labels of one split: shape (n,), integer values >= 0 -> int64 tensor."""
    if y.ndim != 1:
        raise DataError(f"{path}: {key} must be one-dimensional (N,), got shape {list(y.shape)}")
    if y.shape[0] != n:
        xkey = "x_" + key[2:]
        raise DataError(f"{path}: {xkey} has {n} examples but {key} has {y.shape[0]} labels")
    if y.dtype == np.bool_ or not (
        np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
    ):
        raise DataError(f"{path}: {key} has dtype {y.dtype}; labels must be integers")
    if np.issubdtype(y.dtype, np.floating) and not (np.isfinite(y) & (y == np.round(y))).all():
        raise DataError(
            f"{path}: {key} holds non-integer values (dtype {y.dtype}); labels must be "
            "integer class indices"
        )
    if y.size and y.min() < 0:
        raise DataError(f"{path}: {key} has negative labels (min {y.min():g}); labels must be >= 0")
    return torch.from_numpy(y.astype(np.int64))


def _inputs(
    x: np.ndarray, key: str, path: Path, lo: float, hi: float, native: tuple[float, float] | None
) -> tuple[np.ndarray, tuple[float, float]]:
    """Validate one input array; return it and the range its values are in."""
    if x.dtype == np.uint8:
        return x, (0.0, 255.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(
            f"{path}: {key} has dtype {x.dtype}; inputs must be floats in [{lo:g}, {hi:g}] "
            "or uint8 in [0, 255]"
        )
    if not np.isfinite(x).all():
        raise DataError(f"{path}: {key} contains NaN or infinite values")
    low, high = (lo, hi) if native is None else native
    x_min, x_max = float(x.min()), float(x.max())
    if x_min < low or x_max > high:
        raise DataError(
            f"{path}: {key} values lie in [{x_min:g}, {x_max:g}], outside the data range "
            f"[{low:g}, {high:g}]; rescale the data or set the data range (lo/hi) to match"
        )
    return x, (low, high)


def _load_npz(
    path: Path,
    opts: _Options,
    *,
    name: str,
    origin: str,
    native_range: tuple[float, float] | None = None,
) -> Splits:
    """Read an npz archive without pickle; ``native_range`` overrides [lo, hi] as the range
    the float data is in (the shipped sample is in [0, 1] whatever the model's range)."""
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an .npz file")
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        with path.open("rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {_one_line(exc)}") from None
    if magic == b"\x93NUMPY":
        raise DataError(f"{path} is a single .npy array, not an .npz archive with x_train/y_train")
    if not zipfile.is_zipfile(path):
        # np.load would guess a pickle here and suggest loading it unsafely
        raise DataError(
            f"cannot read {path} as an .npz archive: not a zip file of .npy arrays "
            "(write one with numpy.savez)"
        )
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path} as an .npz archive: {_one_line(exc)}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path} is a single .npy array, not an .npz archive with x_train/y_train")
    with npz:
        keys = set(npz.files)
        present = []
        for split in _SPLITS:
            xk, yk = f"x_{split}", f"y_{split}"
            if (xk in keys) != (yk in keys):
                have, missing = (xk, yk) if xk in keys else (yk, xk)
                raise DataError(f"{path} has {have} but no {missing}")
            if xk in keys:
                present.append(split)
        if not present:
            raise DataError(
                f"{path} has neither x_train/y_train nor x_test/y_test "
                f"(found keys: {', '.join(sorted(keys)) or 'none'})"
            )

        # sizes from the headers, so an oversized archive is refused before it is read
        sample_counts = {"train": opts.train_samples, "test": opts.test_samples}
        headers = {split: _npz_header(npz, f"x_{split}") for split in present}
        counts = []
        for split, header in headers.items():
            if header is not None:
                n = header[0][0] if header[0] else 0
                limit = sample_counts[split]
                counts.append((n if limit is None else min(n, limit), header[0][1:]))
        _check_size(str(path), counts, opts.max_bytes)
        for split, header in headers.items():
            # the stored array is read whole, even when only a subset is kept
            stored = 0 if header is None else math.prod(header[0]) * header[1].itemsize
            if stored > opts.max_bytes:
                raise DataError(
                    f"{path}: x_{split} takes {_gib(stored)} as stored, over the limit of "
                    f"{_gib(opts.max_bytes)}; save a smaller file"
                )

        labels: dict[str, torch.Tensor] = {}
        inputs: dict[str, np.ndarray] = {}
        for split in present:
            xk, yk = f"x_{split}", f"y_{split}"
            x = _read_array(npz, xk, path)
            if x.ndim < 2:
                raise DataError(
                    f"{path}: {xk} must have shape (N, ...) with one row per example, "
                    f"got shape {list(x.shape)}"
                )
            if x.shape[0] == 0:
                raise DataError(f"{path}: the {split} split is empty ({xk} has 0 examples)")
            labels[split] = _labels(_read_array(npz, yk, path), yk, x.shape[0], path)
            inputs[split] = x
        classes = _read_array(npz, "classes", path) if "classes" in keys else None

    if len(present) == 2 and inputs["train"].shape[1:] != inputs["test"].shape[1:]:
        raise DataError(
            f"{path}: x_train examples have shape {list(inputs['train'].shape[1:])} but x_test "
            f"examples have shape {list(inputs['test'].shape[1:])}; both splits need the same"
        )
    max_label = max(int(y.max()) for y in labels.values())
    if classes is not None:
        num_classes = int(classes.shape[0]) if classes.ndim >= 1 else 0
        if max_label >= num_classes:
            raise DataError(
                f"{path}: labels go up to {max_label} but the classes array names only "
                f"{num_classes} classes"
            )
    else:
        num_classes = max_label + 1

    tensors: dict[str, torch.Tensor | None] = {"train": None, "test": None}
    targets: dict[str, torch.Tensor | None] = {"train": None, "test": None}
    totals: dict[str, int | None] = {"train": None, "test": None}
    scaled = ""
    for offset, split in enumerate(_SPLITS):
        if split not in present:
            continue
        x, native = _inputs(inputs[split], f"x_{split}", path, opts.lo, opts.hi, native_range)
        y = labels[split]
        totals[split] = int(y.numel())
        index = _subset_indices(y, sample_counts[split], opts.seed + offset)
        if index is not None:
            x, y = x[index.numpy()], y[index]
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        tensors[split] = _to_range(tensor, native, opts.lo, opts.hi)
        targets[split] = y
        scaled = _range_words(native, opts.lo, opts.hi)
        if native == (0.0, 255.0):
            scaled = f"uint8 {scaled}, i.e. scaled by 1/255"

    sizes = ", ".join(
        f"{split} {_subset_words(int(targets[split].numel()), totals[split])}" for split in present
    )
    return Splits(
        name=name,
        x_train=tensors["train"],
        y_train=targets["train"],
        x_test=tensors["test"],
        y_test=targets["test"],
        num_classes=num_classes,
        source=f"{origin}: {sizes}; {scaled}",
        n_train_total=totals["train"],
        n_test_total=totals["test"],
        lo=opts.lo,
        hi=opts.hi,
    )


# ---------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (torchvision's python batches, never downloaded)
# ---------------------------------------------------------------------------------------


def _load_cifar(name: str, root_text: str, opts: _Options) -> Splits:
    from torchvision import datasets

    if not root_text.strip():
        raise DataError(f"{name}: give the folder holding the CIFAR files, e.g. {name}:DIR")
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = Path(root_text).expanduser()
    # accept the batches folder itself as well as the folder holding it
    if root.name == cls.base_folder and not (root / cls.base_folder).is_dir():
        root = root.parent
    pretty = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    loaded = {}
    for split in _SPLITS:
        try:
            loaded[split] = cls(root=str(root), train=(split == "train"), download=False)
        except RuntimeError:
            raise DataError(
                f"{pretty} files not found (or corrupted) under {root_text} (expected "
                f"{cls.base_folder}/ there); wciaudit never downloads: fetch them once with "
                f"torchvision.datasets.{cls.__name__}(root=DIR, download=True)"
            ) from None
        except (OSError, EOFError, ValueError, KeyError) as exc:
            raise DataError(
                f"cannot read the {pretty} {split} files under {root_text}: {_one_line(exc)}"
            ) from None

    sample_counts = {"train": opts.train_samples, "test": opts.test_samples}
    labels = {s: torch.as_tensor(loaded[s].targets, dtype=torch.int64) for s in _SPLITS}
    indices = {
        s: _subset_indices(labels[s], sample_counts[s], opts.seed + k)
        for k, s in enumerate(_SPLITS)
    }
    counts = [
        (labels[s].numel() if indices[s] is None else indices[s].numel(), (3, 32, 32))
        for s in _SPLITS
    ]
    _check_size(f"{pretty} under {root_text}", counts, opts.max_bytes)

    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for s in _SPLITS:
        data = loaded[s].data  # uint8 (N, 32, 32, 3)
        y = labels[s]
        if indices[s] is not None:
            data, y = data[indices[s].numpy()], y[indices[s]]
        x = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).float().div_(255.0)
        out[s] = (_to_range(x.contiguous(), (0.0, 1.0), opts.lo, opts.hi), y)
    sizes = ", ".join(f"{s} {_subset_words(out[s][1].numel(), labels[s].numel())}" for s in _SPLITS)
    return Splits(
        name=name,
        x_train=out["train"][0],
        y_train=out["train"][1],
        x_test=out["test"][0],
        y_test=out["test"][1],
        num_classes=len(loaded["train"].classes),
        source=(
            f"{pretty} python batches under {root_text}: {sizes}; uint8 "
            f"{_range_words((0.0, 255.0), opts.lo, opts.hi)}"
        ),
        n_train_total=int(labels["train"].numel()),
        n_test_total=int(labels["test"].numel()),
        lo=opts.lo,
        hi=opts.hi,
    )


# ---------------------------------------------------------------------------------------
# ImageFolder trees
# ---------------------------------------------------------------------------------------


def _pil_loader(mode: str) -> Callable[[str], Any]:
    def load(path: str) -> Any:
        from PIL import Image

        with open(path, "rb") as fh:
            image = Image.open(fh)
            return image.convert(mode)

    return load


def _image_transform(data_config: dict[str, Any] | None) -> tuple[Callable[[Any], Any], int | None]:
    """The model's eval transform without normalisation, and the channel count it wants."""
    input_size = None if data_config is None else data_config.get("input_size")
    if input_size is None:
        from torchvision.transforms import functional

        return functional.pil_to_tensor, None
    from timm.data import create_transform

    if len(input_size) != 3:
        raise DataError(f"the model's input_size must be (C, H, W), got {list(input_size)}")
    kwargs = {
        key: data_config[key]
        for key in ("interpolation", "crop_pct", "crop_mode")
        if data_config.get(key) is not None
    }
    transform = create_transform(
        input_size=tuple(int(s) for s in input_size),
        is_training=False,
        normalize=False,
        **kwargs,
    )
    return transform, int(input_size[0])


def _load_image_folder(
    root: Path, data_config: dict[str, Any] | None, opts: _Options, *, name: str
) -> Splits:
    from torchvision.datasets import ImageFolder

    folders = {"train": root / "train"}
    test_name = "test" if (root / "test").is_dir() else "val"
    folders["test"] = root / test_name
    present = [s for s in _SPLITS if folders[s].is_dir()]
    if not present:
        raise DataError(
            f"{root} has no train/, test/ or val/ folder; an ImageFolder dataset is laid out "
            "as DIR/train/<class>/*.png and DIR/test/<class>/*.png (or DIR/val/...)"
        )

    transform, channels = _image_transform(data_config)
    if channels not in (None, 1, 3):
        raise DataError(f"images can be read with 1 or 3 channels, the model wants {channels}")
    mode = "L" if channels == 1 else "RGB"

    found = {}
    for split in present:
        try:
            found[split] = ImageFolder(str(folders[split]), loader=_pil_loader(mode))
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"{folders[split]}: {_one_line(exc)}") from None

    # one class-to-index map for both splits: the train split's
    reference = found["train"] if "train" in found else found["test"]
    class_to_idx = dict(reference.class_to_idx)
    if "train" in found and "test" in found:
        extra = sorted(set(found["test"].classes) - set(class_to_idx))
        if extra:
            raise DataError(
                f"{folders['test']} has classes that {folders['train']} lacks: "
                f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}; "
                "the test classes must be a subset of the train classes"
            )

    sample_counts = {"train": opts.train_samples, "test": opts.test_samples}
    files: dict[str, list[tuple[str, int]]] = {}
    totals: dict[str, int | None] = {"train": None, "test": None}
    for offset, split in enumerate(_SPLITS):
        if split not in found:
            continue
        ds = found[split]
        samples = [(p, class_to_idx[ds.classes[t]]) for p, t in ds.samples]
        totals[split] = len(samples)
        y = torch.tensor([t for _, t in samples], dtype=torch.int64)
        index = _subset_indices(y, sample_counts[split], opts.seed + offset)
        files[split] = samples if index is None else [samples[i] for i in index.tolist()]

    # size of one example: the model's input, or the first image's own size
    if channels is not None:
        shape = [int(s) for s in data_config["input_size"]]
    else:
        first = files[present[0]][0][0]
        try:
            from PIL import Image

            with Image.open(first) as image:
                shape = [3, image.height, image.width]
        except OSError as exc:
            raise DataError(f"cannot read image {first}: {_one_line(exc)}") from None
    _check_size(str(root), [(len(files[s]), shape) for s in present], opts.max_bytes)

    loader = _pil_loader(mode)

    def decode(item: tuple[str, int]) -> torch.Tensor:
        path = item[0]
        try:
            x = transform(loader(path))
        except OSError as exc:
            raise DataError(f"cannot read image {path}: {_one_line(exc)}") from None
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if list(x.shape) != shape:
            raise DataError(
                f"image {path} is {x.shape[1]}x{x.shape[2]} but {files[present[0]][0][0]} is "
                f"{shape[1]}x{shape[2]}; without a model input size all images must be the "
                "same size"
            )
        return x

    tensors: dict[str, torch.Tensor | None] = {"train": None, "test": None}
    targets: dict[str, torch.Tensor | None] = {"train": None, "test": None}
    workers = max(1, min(_IMAGE_WORKERS, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for split in present:
            x = torch.stack(list(pool.map(decode, files[split])))
            tensors[split] = _to_range(x, (0.0, 1.0), opts.lo, opts.hi)
            targets[split] = torch.tensor([t for _, t in files[split]], dtype=torch.int64)

    how = (
        "model eval transform (timm, no normalisation)"
        if channels is not None
        else "images at their own size"
    )
    sizes = ", ".join(
        f"{'train' if s == 'train' else test_name} {_subset_words(len(files[s]), totals[s])}"
        for s in present
    )
    return Splits(
        name=name,
        x_train=tensors["train"],
        y_train=targets["train"],
        x_test=tensors["test"],
        y_test=targets["test"],
        num_classes=len(class_to_idx),
        source=(
            f"ImageFolder {root}: {sizes}; {how}; {_range_words((0.0, 1.0), opts.lo, opts.hi)}"
        ),
        n_train_total=totals["train"],
        n_test_total=totals["test"],
        lo=opts.lo,
        hi=opts.hi,
    )


# ---------------------------------------------------------------------------------------
# adapting image data to the model's input size
# ---------------------------------------------------------------------------------------

_RESIZE_CHUNK = 256  # examples per interpolate call: bounds the temporary memory


def _adapt(x: torch.Tensor, size: tuple[int, int, int], lo: float, hi: float) -> torch.Tensor:
    channels, height, width = size
    out = torch.empty((x.shape[0], channels, height, width), dtype=torch.float32)
    for start in range(0, x.shape[0], _RESIZE_CHUNK):
        part = x[start : start + _RESIZE_CHUNK].float()
        if part.shape[1] == 1 and channels == 3:
            part = part.expand(-1, 3, -1, -1)
        elif part.shape[1] == 3 and channels == 1:
            part = part.mean(dim=1, keepdim=True)
        if tuple(part.shape[2:]) != (height, width):
            part = torch.nn.functional.interpolate(
                part, size=(height, width), mode="bilinear", align_corners=False, antialias=True
            ).clamp_(lo, hi)
        out[start : start + part.shape[0]] = part
    return out


def fit_to_model(splits: Splits, input_size: Sequence[int] | None) -> tuple[Splits, str | None]:
    """Adapt image data (N, C', H', W') to the model's input size (C, H, W).

    Grey data (C' = 1) is repeated to 3 channels, RGB data (C' = 3) is averaged to 1,
    and the spatial size is changed with bilinear interpolation (antialiased,
    ``align_corners=False``), clamped back to [lo, hi]. Data that is not image-shaped,
    or whose channels cannot be converted, is returned unchanged; the caller checks
    whether the model accepts it.

    Args:
        splits: the loaded data.
        input_size: the model's (C, H, W), or ``None`` when unknown.

    Returns:
        ``(splits, note)``: new Splits and a one-line note such as
        ``"resized 1x8x8 -> 3x32x32 to the model's input size"``, or the same Splits and
        ``None`` when nothing changed.

    Example:
        >>> s, note = fit_to_model(load_data("sample", test_samples=10), (3, 16, 16))
        >>> s.input_shape, note
        ([3, 16, 16], "resized 1x8x8 -> 3x16x16 to the model's input size")
    """
    if input_size is None or len(input_size) != 3:
        return splits, None
    target = tuple(int(s) for s in input_size)
    current = splits.input_shape
    if len(current) != 3 or tuple(current) == target:
        return splits, None
    channels_ok = current[0] == target[0] or (current[0], target[0]) in ((1, 3), (3, 1))
    if not channels_ok or min(target) < 1:
        return splits, None

    def adapt(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else _adapt(x, target, splits.lo, splits.hi)

    new = replace(splits, x_train=adapt(splits.x_train), x_test=adapt(splits.x_test))
    verb = "resized" if tuple(current[1:]) != target[1:] else "converted"
    before = "x".join(str(s) for s in current)
    after = "x".join(str(s) for s in target)
    return new, f"{verb} {before} -> {after} to the model's input size"
