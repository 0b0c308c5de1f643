"""Array layouts: grey (N, H, W) and channels-last (N, H, W, C) data made channels-first.

PyTorch image models take (N, C, H, W). Data saved from other tools is often (N, H, W)
for grey images or (N, H, W, C) with C in {1, 3, 4}. When the model's input size
(C, H, W) is known, such data is converted while it is loaded, with a note; when it is
not known, :func:`to_channels_first` guesses from the shape alone, which the scan uses
only after the model has refused the data as it is (a flattening model would accept
channels-last data and silently see its pixels in another order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .splits import Splits

GREY = "grey"
CHANNELS_LAST = "channels-last"
_CHANNEL_COUNTS = (1, 3, 4)


def layout_change(shape: Sequence[int], input_size: Sequence[int] | None) -> str | None:
    """Which change makes one example of ``shape`` channels-first, if any.

    Args:
        shape: per-example shape, without the leading N.
        input_size: the model's (C, H, W), or ``None`` to guess from ``shape`` alone.

    Returns:
        ``"grey"`` (add a channel axis), ``"channels-last"`` (move the last axis to the
        front) or ``None`` (leave the data as it is).

    Example:
        >>> layout_change((32, 32, 3), (3, 32, 32)), layout_change((8, 8), (1, 8, 8))
        ('channels-last', 'grey')
    """
    shape = tuple(int(s) for s in shape)
    if input_size is None:
        if len(shape) == 2:
            return GREY
        if len(shape) == 3 and shape[-1] in _CHANNEL_COUNTS and shape[0] not in _CHANNEL_COUNTS:
            return CHANNELS_LAST
        return None
    if len(input_size) != 3:
        return None
    channels = int(input_size[0])
    if len(shape) == 2 and channels == 1:
        return GREY
    last_is_channel = channels in _CHANNEL_COUNTS and shape[-1] == channels
    if len(shape) == 3 and shape[0] != channels and last_is_channel:
        return CHANNELS_LAST
    return None


def apply_layout(x: Any, change: str | None) -> Any:
    """Apply a :func:`layout_change` result to a batch ``x`` (numpy array or tensor)."""
    if change == GREY:
        return x[:, None]
    if change == CHANNELS_LAST:
        return x.movedim(-1, 1) if isinstance(x, torch.Tensor) else np.moveaxis(x, -1, 1)
    return x


def layout_note(change: str, shape: Sequence[int]) -> str:
    """One line saying what :func:`apply_layout` did to examples of ``shape``."""
    dims = ", ".join(str(int(s)) for s in shape)
    if change == GREY:
        return f"grey data (N, {dims}) given a channel axis: (N, 1, {dims}), channels first"
    moved = ", ".join(str(int(s)) for s in (shape[-1], *shape[:-1]))
    return f"channels-last data (N, {dims}) moved to channels-first (N, {moved})"


def to_channels_first(
    splits: Splits, input_size: Sequence[int] | None = None
) -> tuple[Splits, str | None]:
    """Make (N, H, W) or (N, H, W, C) data channels-first, with a note saying so.

    Args:
        splits: the loaded data.
        input_size: the model's (C, H, W), or ``None`` to guess from the data's shape
            (grey (N, H, W) gets a channel axis; (N, H, W, C) with C in {1, 3, 4} and H not
            in {1, 3, 4} has C moved to the front).

    Returns:
        ``(splits, note)``: new Splits whose ``notes`` and ``source`` carry the note, or
        the same Splits and ``None`` when nothing changed.

    Example:
        >>> x = torch.rand(4, 6, 6, 3)
        >>> s = Splits("t", x, torch.zeros(4, dtype=torch.int64), None, None, 1, "t", 4, None)
        >>> to_channels_first(s)[0].input_shape
        [3, 6, 6]
    """
    shape = splits.input_shape
    change = layout_change(shape, input_size) if shape else None
    if change is None:
        return splits, None
    note = layout_note(change, shape)

    def convert(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else apply_layout(x, change).contiguous()

    new = replace(
        splits,
        x_train=convert(splits.x_train),
        x_test=convert(splits.x_test),
        source=f"{splits.source}; {note}",
        notes=(*splits.notes, note),
    )
    return new, note
