"""Class labels: validation, the class count, and how it compares with the model's outputs.

Labels are integer class indices 0 .. C-1, where C is the length of the optional
``classes`` array, else the largest label + 1. Labels need not use every class: a
1000-class model audited on examples of classes 7..997 is fine. Whether labels are
shifted (one-based 1..C for a C-class model) is decided against the model's number of
outputs, by :func:`check_labels_fit`, not from the labels alone.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError


def check_labels(y: np.ndarray, key: str, n: int, where: str) -> torch.Tensor:
    """Validate the labels of one split: shape (n,), integer values >= 0.

    Args:
        y: the labels as stored (integer dtype, or floats holding whole numbers).
        key: the array's name, e.g. ``"y_train"``.
        n: number of examples in the matching inputs.
        where: the file or object named in error messages.

    Returns:
        The labels as an int64 tensor, shape (n,).

    Raises:
        DataError: on a wrong shape, a non-integer dtype or value, or a negative label.
    """
    if y.ndim != 1:
        raise DataError(f"{where}: {key} must be one-dimensional (N,), got shape {list(y.shape)}")
    if y.shape[0] != n:
        xkey = "x_" + key[2:]
        raise DataError(f"{where}: {xkey} has {n} examples but {key} has {y.shape[0]} labels")
    if y.dtype == np.bool_ or not (
        np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
    ):
        raise DataError(f"{where}: {key} has dtype {y.dtype}; labels must be integers")
    if np.issubdtype(y.dtype, np.floating) and not (np.isfinite(y) & (y == np.round(y))).all():
        raise DataError(
            f"{where}: {key} holds non-integer values (dtype {y.dtype}); labels must be "
            "integer class indices"
        )
    if y.size and y.min() < 0:
        raise DataError(
            f"{where}: {key} has negative labels (min {y.min():g}); labels must be >= 0"
        )
    return torch.from_numpy(y.astype(np.int64))


def count_classes(labels: list[torch.Tensor], classes: np.ndarray | None, where: str) -> int:
    """The number of classes C, after checking that every label lies in [0, C).

    Args:
        labels: the checked labels of each present split (none empty).
        classes: the optional array naming the classes; its length is C.
        where: the file or object named in error messages.

    Returns:
        The length of ``classes``, else the largest label + 1 (labels 7..997 give 998:
        the data's labels fit any model with at least 998 outputs).

    Raises:
        DataError: if a label is C or more for the ``classes`` array given.
    """
    high = max(int(y.max()) for y in labels)
    if classes is not None:
        num_classes = int(classes.shape[0]) if classes.ndim >= 1 else 0
        if high >= num_classes:
            low = min(int(y.min()) for y in labels)
            shift = _shift_words(low, high, num_classes)
            raise DataError(
                f"{where}: labels go up to {high} but the classes array names only "
                f"{num_classes} classes{shift}"
            )
        return num_classes
    return high + 1


def label_range(labels: list[torch.Tensor]) -> tuple[int, int]:
    """The smallest and the largest label over the given (non-empty) splits."""
    return min(int(y.min()) for y in labels), max(int(y.max()) for y in labels)


def check_labels_fit(labels: list[torch.Tensor], num_outputs: int) -> str | None:
    """Check that every label is one of the model's ``num_outputs`` classes, 0 .. C-1.

    Labels that use only some classes (7..997 for a 1000-class model) are valid. When a
    label is C or more and subtracting the smallest label would make them all fit
    (one-based labels 1..C for a C-class model), the error says so.

    Args:
        labels: the labels of each present split (none empty).
        num_outputs: the number of logits the model returns, C.

    Returns:
        :func:`class_count_note` for the model's outputs and the labels' range.

    Raises:
        DataError: if a label is ``num_outputs`` or more.

    Example:
        >>> check_labels_fit([torch.tensor([7, 997])], 1000)
        "model has 1000 outputs, the data's labels run 7..997; the attack and the loss use all 1000"
    """
    low, high = label_range(labels)
    if high >= num_outputs:
        raise DataError(
            f"labels run {low}..{high} but the model has {num_outputs} outputs (classes "
            f"0..{num_outputs - 1}){_shift_words(low, high, num_outputs)}"
        )
    return class_count_note(num_outputs, high + 1, low=low)


def _shift_words(low: int, high: int, num_classes: int) -> str:
    """The advice to subtract ``low`` when that makes labels low..high fit C classes."""
    if low > 0 and high - low < num_classes:
        return f"; wciaudit expects 0..C-1 — subtract {low} from the labels"
    return ""


def class_count_note(num_outputs: int, num_classes: int, *, low: int = 0) -> str | None:
    """A note when the model has more outputs than the data has classes, else ``None``.

    More outputs than classes is legal (a 1000-class model audited on a 10-class subset)
    but is also what a wrong model/data pairing looks like; the attack and the loss use
    every output. Fewer outputs than classes is an error the scan raises itself.
    ``low``, the smallest label, is named when it is not 0.

    Example:
        >>> class_count_note(100, 10)
        "model has 100 outputs, the data's labels use 10 classes; the attack and the loss use all 100"
    """
    if num_outputs <= num_classes:
        return None
    used = f"use {num_classes} classes" if low == 0 else f"run {low}..{num_classes - 1}"
    return (
        f"model has {num_outputs} outputs, the data's labels {used}; "
        f"the attack and the loss use all {num_outputs}"
    )
