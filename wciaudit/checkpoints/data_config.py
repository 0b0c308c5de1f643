"""The model's preprocessing, timm-style: input size, mean/std, interpolation and crop.

Each of input size, mean and std follows :func:`~.precedence.resolve`: the user's
option > the checkpoint's metadata > the model library's config (timm's config of the
built model, or a transformers folder's ``preprocessor_config.json``) > none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config import LoadOptions
from ..errors import CheckpointError, ConfigError
from .precedence import DEFAULT, TIMM_CONFIG, resolve
from .record import CheckpointRecord


@dataclass(frozen=True)
class LibraryPreprocessing:
    """Preprocessing a model library states for a built model (not timm, which is asked
    directly): ``input_size`` ``(C, H, W)``, ``mean``/``std`` in [0, 1] input units, and
    the timm-style ``interpolation`` and ``crop_pct``; ``source`` names where they came from."""

    source: str
    input_size: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"
    crop_pct: float = 1.0


def data_config(
    model: nn.Module,
    is_timm: bool,
    record: CheckpointRecord,
    options: LoadOptions,
    library: LibraryPreprocessing | None = None,
    none_source: str = DEFAULT,
) -> tuple[dict[str, Any], dict[str, str]]:
    """timm-style preprocessing and the source of each of input size, mean and std.

    Args:
        library: what a transformers folder's processor config says, for a non-timm model.
        none_source: the source named when no one gives mean/std (a torchvision model
            says that it has no normalisation of its own).

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
    where = TIMM_CONFIG
    if is_timm:
        timm_size, timm_mean, timm_std = _timm_config(model, config)
    elif library is not None:
        timm_size, timm_mean, timm_std, where = (
            library.input_size,
            library.mean,
            library.std,
            library.source,
        )
        config.update(interpolation=library.interpolation, crop_pct=library.crop_pct)
    size = resolve(
        "input_size", options.input_size, record.input_size, timm_size, None, config_source=where
    )
    meta_stats = record.mean is not None and record.std is not None
    mean = resolve(
        "mean",
        options.mean,
        record.mean if meta_stats else None,
        timm_mean,
        None,
        config_source=where,
    )
    std = resolve(
        "std",
        options.std,
        record.std if meta_stats else None,
        timm_std,
        None,
        config_source=where,
    )
    stats_source = none_source if mean.value is None else mean.source
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
    sources = {"input_size": size.source, "mean": stats_source, "std": stats_source}
    if mean.value is not None:
        sources["std"] = std.source
    return config, sources


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
