"""The model's preprocessing, timm-style: input size, mean/std, interpolation and crop.

Each of input size, mean and std follows :func:`~.precedence.resolve`: the user's
option > the checkpoint's metadata > timm's config of the built model > none.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import LoadOptions
from ..errors import CheckpointError, ConfigError
from .precedence import resolve
from .record import CheckpointRecord


def data_config(
    model: nn.Module, is_timm: bool, record: CheckpointRecord, options: LoadOptions
) -> tuple[dict[str, Any], dict[str, str]]:
    """timm-style preprocessing and the source of each of input size, mean and std.

    Returns:
        ``(config, sources)``: ``config`` has ``input_size`` ``(C, H, W)`` or None,
        ``mean``/``std`` tuples or None, ``interpolation``, ``crop_pct``, ``crop_mode``;
        ``sources`` maps ``input_size``, ``mean`` and ``std`` to where each came from.

    Raises:
        ConfigError (the user's mean/std) or CheckpointError (the checkpoint's): mean/std
        do not have one value per input channel.
    """
    config: dict[str, Any] = {
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    timm_size = timm_mean = timm_std = None
    if is_timm:
        timm_size, timm_mean, timm_std = _timm_config(model, config)
    size = resolve("input_size", options.input_size, record.input_size, timm_size, None)
    meta_stats = record.mean is not None and record.std is not None
    mean = resolve("mean", options.mean, record.mean if meta_stats else None, timm_mean, None)
    std = resolve("std", options.std, record.std if meta_stats else None, timm_std, None)
    config["input_size"] = None if size.value is None else tuple(int(x) for x in size.value)
    config["mean"] = None if mean.value is None else tuple(mean.value)
    config["std"] = None if std.value is None else tuple(std.value)
    if config["mean"] is not None and config["input_size"] is not None:
        channels = config["input_size"][0]
        if len(config["mean"]) not in (1, channels) or len(config["std"]) not in (1, channels):
            error = ConfigError if options.mean is not None else CheckpointError
            raise error(
                f"mean/std have {len(config['mean'])}/{len(config['std'])} values but the model "
                f"takes {channels} input channel(s); give one value per channel"
            )
    return config, {"input_size": size.source, "mean": mean.source, "std": std.source}


def _timm_config(
    model: nn.Module, config: dict[str, Any]
) -> tuple[tuple[int, ...], tuple[float, ...] | None, tuple[float, ...] | None]:
    """timm's own data config of the built model; fills interpolation and crop."""
    from timm.data import resolve_data_config

    resolved = resolve_data_config({}, model=model)
    config.update(
        interpolation=resolved.get("interpolation", "bilinear"),
        crop_pct=float(resolved.get("crop_pct", 1.0)),
        crop_mode=resolved.get("crop_mode", "center"),
    )
    input_size = tuple(resolved["input_size"])
    try:  # the model's own channels and size (img_size=8 beats a nominal 160)
        from timm.models import get_model_input_config

        input_size = tuple(get_model_input_config(model)["input_size"])
    except (ImportError, KeyError, TypeError, AttributeError):
        pass
    size = tuple(int(x) for x in input_size)
    channels = size[0]
    return (
        size,
        fit_channels(resolved.get("mean"), channels),
        fit_channels(resolved.get("std"), channels),
    )


def fit_channels(values: Any, channels: int) -> tuple[float, ...] | None:
    """timm's defaults are 3-channel; a 1-channel model gets their average."""
    if values is None:
        return None
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if len(set(values)) == 1:
        return (values[0],) * channels
    if channels == 1:
        return (sum(values) / len(values),)
    return values
