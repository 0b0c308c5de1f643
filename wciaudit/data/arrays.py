"""Arrays -> :class:`Splits`: the checks shared by ``.npz`` files, the shipped sample and
a dict of arrays given to the Python API.

The layout (docs/data.md): ``x_train`` (N, ...) with ``y_train`` (N,), and/or ``x_test``
with ``y_test``, and optionally ``classes`` (C,). Inputs are floats already in the data
range [lo, hi] or uint8 in [0, 255] (mapped linearly to [lo, hi]); labels are integers
0 .. C-1. Image inputs are (N, C, H, W); (N, H, W) and (N, H, W, C) are made
channels-first when the model's input size says so (:mod:`wciaudit.data.layout`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .labels import check_labels, count_classes
from .layout import apply_layout, layout_change, layout_note
from .splits import SPLIT_NAMES, LoadOptions, Splits, assemble, subset_indices, subset_words
from .transform import range_words, to_range

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test", "classes")

_GIB = 2**30
_FLOAT32_BYTES = 4


def gib(n_bytes: int) -> str:
    """A byte count in GiB, three significant digits."""
    return f"{n_bytes / _GIB:.3g} GiB"


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def check_size(label: str, counts: Sequence[tuple[int, Sequence[int]]], max_bytes: int) -> None:
    """Refuse when the float32 tensors would exceed ``max_bytes`` (counts: (N, shape))."""
    needed = sum(n * math.prod(shape) * _FLOAT32_BYTES for n, shape in counts)
    if needed > max_bytes:
        raise DataError(
            f"{label} would take {gib(needed)} as float32, over the limit of "
            f"{gib(max_bytes)}; use --train-samples/--test-samples to audit a subset"
        )


def present_splits(keys: set[str], where: str) -> list[str]:
    """The splits with both arrays present; an x without its y (or the reverse) is an error."""
    present = []
    for split in SPLIT_NAMES:
        xk, yk = f"x_{split}", f"y_{split}"
        if (xk in keys) != (yk in keys):
            have, missing = (xk, yk) if xk in keys else (yk, xk)
            raise DataError(f"{where} has {have} but no {missing}")
        if xk in keys:
            present.append(split)
    if not present:
        raise DataError(
            f"{where} has neither x_train/y_train nor x_test/y_test "
            f"(found keys: {', '.join(sorted(keys)) or 'none'})"
        )
    return present


def check_inputs(
    x: np.ndarray, key: str, where: str, lo: float, hi: float, native: tuple[float, float] | None
) -> tuple[float, float]:
    """Validate one input array; return the range its values are in.

    uint8 data is in [0, 255]; float data must lie in ``native`` when given (the shipped
    sample is in [0, 1] whatever the model's range), else in [lo, hi].
    """
    if x.dtype == np.uint8:
        return (0.0, 255.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(
            f"{where}: {key} has dtype {x.dtype}; inputs must be floats in [{lo:g}, {hi:g}] "
            "or uint8 in [0, 255]"
        )
    if not np.isfinite(x).all():
        raise DataError(f"{where}: {key} contains NaN or infinite values")
    low, high = (lo, hi) if native is None else native
    x_min, x_max = float(x.min()), float(x.max())
    if x_min < low or x_max > high:
        raise DataError(
            f"{where}: {key} values lie in [{x_min:g}, {x_max:g}], outside the data range "
            f"[{low:g}, {high:g}]; rescale the data or set the data range (--lo/--hi) to match"
        )
    return (low, high)


def arrays_from_mapping(data: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    """Numpy arrays from a dict of numpy arrays or torch tensors (the Python API's form)."""
    unknown = sorted(str(k) for k in data if k not in ARRAY_KEYS)
    if unknown:
        raise DataError(
            f"{where}: unknown key {', '.join(map(repr, unknown))}; accepted keys: "
            f"{', '.join(ARRAY_KEYS)}"
        )
    out = {}
    for key, value in data.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            # numpy has no bfloat16; float32 holds every bfloat16 value exactly
            out[key] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
        else:
            out[key] = np.asarray(value)
        if out[key].dtype == object:
            raise DataError(f"{where}: {key} holds Python objects; give numeric arrays")
    return out


def _checked_splits(
    arrays: Mapping[str, np.ndarray], present: list[str], where: str, input_size: Any
) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor], tuple[str, ...]]:
    """Shapes and labels of each split, with grey/channels-last data made channels-first."""
    inputs: dict[str, np.ndarray] = {}
    labels: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    for split in present:
        xk, yk = f"x_{split}", f"y_{split}"
        x = arrays[xk]
        if x.ndim < 2:
            raise DataError(
                f"{where}: {xk} must have shape (N, ...) with one row per example, "
                f"got shape {list(x.shape)}"
            )
        if x.shape[0] == 0:
            raise DataError(f"{where}: the {split} split is empty ({xk} has 0 examples)")
        labels[split] = check_labels(arrays[yk], yk, x.shape[0], where)
        # without the model's input size the stored layout is kept (see data.layout)
        change = None if input_size is None else layout_change(x.shape[1:], input_size)
        if change is not None:
            note = layout_note(change, x.shape[1:])
            notes += [] if note in notes else [note]
        inputs[split] = apply_layout(x, change)
    if len(present) == 2 and inputs["train"].shape[1:] != inputs["test"].shape[1:]:
        raise DataError(
            f"{where}: x_train examples have shape {list(inputs['train'].shape[1:])} but x_test "
            f"examples have shape {list(inputs['test'].shape[1:])}; both splits need the same"
        )
    return inputs, labels, tuple(notes)


def splits_from_arrays(
    arrays: Mapping[str, np.ndarray],
    opts: LoadOptions,
    *,
    where: str,
    name: str,
    origin: str,
    native_range: tuple[float, float] | None = None,
    input_size: Sequence[int] | None = None,
) -> Splits:
    """Check arrays laid out as in the module docstring and turn them into :class:`Splits`.

    Args:
        arrays: ``x_train``/``y_train`` and/or ``x_test``/``y_test``, optionally ``classes``.
        opts: data range, subset sizes and seed, size limit.
        where: the file or object named in error messages.
        name: ``Splits.name``.
        origin: the start of ``Splits.source``, e.g. ``"npz file d.npz"``.
        native_range: the range float inputs are in, when not [lo, hi].
        input_size: the model's (C, H, W), which decides layout conversions; ``None``
            leaves the layout alone.

    Raises:
        DataError: on any malformed array, label or value (one line naming ``where``).
    """
    present = present_splits(set(arrays), where)
    inputs, labels, notes = _checked_splits(arrays, present, where, input_size)
    classes = arrays.get("classes")
    num_classes = count_classes(list(labels.values()), classes, where)
    counts = [
        (min(len(labels[s]), opts.samples(s) or len(labels[s])), inputs[s].shape[1:])
        for s in present
    ]
    check_size(where, counts, opts.max_bytes)

    parts: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}
    scaled = ""
    for split in present:
        key = f"x_{split}"
        native = check_inputs(arrays[key], key, where, opts.lo, opts.hi, native_range)
        x, y = inputs[split], labels[split]
        index = subset_indices(y, opts.samples(split), opts.subset_seed(split))
        if index is not None:
            x, y = x[index.numpy()], y[index]
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        parts[split] = (to_range(tensor, native, opts.lo, opts.hi), y, len(labels[split]))
        scaled = range_words(native, opts.lo, opts.hi)
        if native == (0.0, 255.0):
            scaled = f"uint8 {scaled}, i.e. scaled by 1/255"

    sizes = ", ".join(f"{s} {subset_words(len(parts[s][1]), parts[s][2])}" for s in present)
    source = "; ".join([f"{origin}: {sizes}", scaled, *notes])
    return assemble(name, parts, num_classes=num_classes, source=source, opts=opts, notes=notes)
