"""Value ranges and image sizes: mapping to [lo, hi], timm's eval transform, and
adapting image data to a model's input size (SPEC: "The model under audit")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from ..errors import DataError
from .splits import Splits

_RESIZE_CHUNK = 256  # examples per interpolate call: bounds the temporary memory

#: what a data config without these keys gets: the scan's own defaults (a model without
#: timm's config is fed images at its input size, not timm's resize-then-crop by 0.875)
EVAL_TRANSFORM_DEFAULTS = {"interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}


def to_range(x: torch.Tensor, native: tuple[float, float], lo: float, hi: float) -> torch.Tensor:
    """Map values linearly from the ``native`` range to [lo, hi] (no copy when equal).

    ``x' = (x - a) * (hi - lo) / (b - a) + lo`` for ``native = (a, b)``, clamped to
    [lo, hi] against rounding.
    """
    if native == (lo, hi):
        return x
    a, b = native
    return ((x - a) * ((hi - lo) / (b - a)) + lo).clamp_(lo, hi)


def range_words(native: tuple[float, float], lo: float, hi: float) -> str:
    """How the values were scaled, for ``Splits.source``."""
    if native == (lo, hi):
        return f"values in [{lo:g}, {hi:g}]"
    return f"values mapped from [{native[0]:g}, {native[1]:g}] to [{lo:g}, {hi:g}]"


def image_transform(data_config: dict[str, Any] | None) -> tuple[Callable[[Any], Any], int | None]:
    """The model's timm eval transform without normalisation, and the channel count it
    wants; without an ``input_size``, PIL images become uint8 tensors at their own size.

    ``interpolation``, ``crop_pct`` and ``crop_mode`` missing from ``data_config`` take
    :data:`EVAL_TRANSFORM_DEFAULTS` (``crop_pct`` 1.0: no crop), as the command line does,
    rather than timm's own default crop of 0.875; images already at the input size come
    through unchanged.
    """
    input_size = None if data_config is None else data_config.get("input_size")
    if input_size is None:
        from torchvision.transforms import functional

        return functional.pil_to_tensor, None
    from timm.data import create_transform

    if len(input_size) != 3:
        raise DataError(f"the model's input_size must be (C, H, W), got {list(input_size)}")
    kwargs = {
        key: default if data_config.get(key) is None else data_config[key]
        for key, default in EVAL_TRANSFORM_DEFAULTS.items()
    }
    transform = create_transform(
        input_size=tuple(int(s) for s in input_size),
        is_training=False,
        normalize=False,
        **kwargs,
    )
    return transform, int(input_size[0])


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
        >>> from wciaudit.data import load_data
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
