"""Class labels: validation, the class count, and how it compares with the model's outputs.

Labels are integer class indices 0 .. C-1, where C is the length of the optional
``classes`` array, else the largest label + 1.
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

    Raises:
        DataError: if a label is C or more, or, without a ``classes`` array, if no label
            is 0 (labels 1..10 are one-based: C would count a class nobody has).
    """
    low = min(int(y.min()) for y in labels)
    high = max(int(y.max()) for y in labels)
    if classes is not None:
        num_classes = int(classes.shape[0]) if classes.ndim >= 1 else 0
        if high >= num_classes:
            raise DataError(
                f"{where}: labels go up to {high} but the classes array names only "
                f"{num_classes} classes"
            )
        return num_classes
    if low > 0:
        raise DataError(
            f"{where}: labels run {low}..{high}; wciaudit expects 0..C-1 — subtract {low}, "
            "or store a classes array naming all C classes"
        )
    return high + 1


def class_count_note(num_outputs: int, num_classes: int) -> str | None:
    """A note when the model has more outputs than the data has classes, else ``None``.

    More outputs than classes is legal (a 1000-class model audited on a 10-class subset)
    but is also what a wrong model/data pairing looks like; the attack and the loss use
    every output. Fewer outputs than classes is an error the scan raises itself.

    Example:
        >>> class_count_note(100, 10)
        "model has 100 outputs, the data's labels use 10 classes; the attack and the loss use all 100"
    """
    if num_outputs <= num_classes:
        return None
    return (
        f"model has {num_outputs} outputs, the data's labels use {num_classes} classes; "
        f"the attack and the loss use all {num_outputs}"
    )
