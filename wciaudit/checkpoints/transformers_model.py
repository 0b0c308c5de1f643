"""Hugging Face transformers image classifiers: a ``save_pretrained`` folder -> model.

A folder holding ``config.json`` (with ``architectures`` / ``model_type``, where timm's
own folder config has ``architecture``), ``model.safetensors`` (or
``pytorch_model.bin``) and, from the image processor, ``preprocessor_config.json``.

The model is built and its weights loaded by transformers' own
``AutoModelForImageClassification.from_pretrained`` from the folder, with
``local_files_only=True`` and never ``trust_remote_code``: nothing is downloaded and no
code from the folder runs. transformers maps the names a file was saved under to its
modules' current names; a missing, unexpected or mis-shaped key, which transformers
would only warn about (initialising the weight at random), is refused here, and the
loaded weights then pass wciaudit's strict loader (every key, shape, finite) like every
other format.

:class:`LogitsOf` returns the output's ``logits`` and registers the transformers
model's own children as its children, so every weight keeps transformers' name
(``vit.encoder.layer.0.attention.attention.query.weight``, ``classifier.weight``).

Input size, mean and std come from ``preprocessor_config.json`` (``image_mean``,
``image_std`` when ``do_normalize``; ``crop_size`` or ``size``) and, for the size, the
model config's ``image_size``; the processor's rescale by 1/255 is wciaudit's [0, 1]
input range, so mean and std apply as written.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ._text import list_keys, one_line, read_json_object
from .data_config import LibraryPreprocessing
from .precedence import TRANSFORMERS_CONFIG, resolve
from .record import CheckpointRecord

#: the format name of such a folder in the result
FORMAT = "transformers-folder"
PROCESSOR_FILE = "preprocessor_config.json"
_INSTALL = "pip install 'wciaudit[transformers]'"
# PIL's resampling codes, as the processor writes them -> timm's names
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
# config attributes that would reach for code or files outside the folder
_FORBIDDEN_ARGS = ("auto_map", "trust_remote_code", "revision", "cache_dir", "token")


def is_transformers_config(config: Mapping[str, Any]) -> bool:
    """A transformers ``config.json`` (``architectures`` or ``model_type``), not timm's
    (``architecture``)."""
    if "architecture" in config:
        return False
    return isinstance(config.get("architectures"), list) or isinstance(
        config.get("model_type"), str
    )


def architecture_name(config: Mapping[str, Any]) -> str | None:
    """The class ``config.json`` names (``ViTForImageClassification``), else its model type."""
    names = config.get("architectures")
    if isinstance(names, list) and names and isinstance(names[0], str) and names[0].strip():
        return names[0].strip()
    model_type = config.get("model_type")
    return model_type.strip() if isinstance(model_type, str) and model_type.strip() else None


def label_count(config: Mapping[str, Any]) -> int | None:
    """Classes as transformers counts them: ``id2label``'s size, else ``num_labels``."""
    labels = config.get("id2label")
    if isinstance(labels, Mapping) and labels:
        return len(labels)
    n = config.get("num_labels")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


class LogitsOf(nn.Module):
    """``x -> hf_model(pixel_values=x).logits``, with the weights under transformers' names.

    The transformers model's children are this module's children (the same objects), so
    ``named_parameters()`` and ``state_dict()`` give the keys of ``model.safetensors``.
    """

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        own = list(hf_model.named_parameters(recurse=False)) + list(
            hf_model.named_buffers(recurse=False)
        )
        if own:
            raise CheckpointError(
                f"{type(hf_model).__name__} holds tensors outside its sub-modules "
                f"({', '.join(n for n, _ in own[:3])}); wciaudit cannot keep their names"
            )
        for name, child in hf_model.named_children():
            self.add_module(name, child)
        # not a registered child: its children are ours already
        object.__setattr__(self, "hf_model", hf_model)

    def train(self, mode: bool = True) -> LogitsOf:
        super().train(mode)
        self.hf_model.training = mode  # the children were set by super().train
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf_model(pixel_values=x, return_dict=True).logits


def build_transformers(
    record: CheckpointRecord, user_args: Mapping[str, Any] | None, user_nc: int | None
) -> tuple[nn.Module, str, int | None, str, LibraryPreprocessing]:
    """The folder's model with its weights: ``(model, label, classes, classes' source,
    preprocessing)``.

    Args:
        record: the folder's record (``record.folder`` set).
        user_args: config attributes to override (``--arch-args``), or None.
        user_nc: ``--num-classes``: sets the config's ``num_labels``.

    Raises:
        CheckpointError: transformers is missing (the message names the extra), the
            config is not an image classifier transformers knows, or the weights do not
            fit it (missing, unexpected or mis-shaped keys).
    """
    folder = record.folder
    if folder is None:  # only reached for folders; keeps type checkers informed
        raise CheckpointError("internal error: not a transformers folder")
    name = record.arch or "a transformers model"
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise CheckpointError(
            f"{folder} is a Hugging Face transformers model ({name}); reading it needs "
            f"transformers: {_INSTALL}"
        ) from None
    args = dict(user_args or {})
    bad = [k for k in _FORBIDDEN_ARGS if k in args]
    if bad:
        raise CheckpointError(
            f"arch_args may not set {', '.join(bad)}: wciaudit builds transformers models "
            "from the folder's config alone and never runs code from it"
        )
    try:
        with _quiet():
            config, hf_model, info = _from_folder(folder, args, user_nc)
    except Exception as exc:
        raise CheckpointError(
            one_line(
                f"cannot build the transformers image classifier in {folder} ({name}): "
                f"{type(exc).__name__}: {exc}"
            )
        ) from None
    problems = [
        f"{what} {list_keys(sorted(str(k) for k in info.get(key) or ()))}"
        for key, what in (
            ("missing_keys", "missing keys"),
            ("unexpected_keys", "unexpected keys"),
            ("mismatched_keys", "mis-shaped keys"),
        )
        if info.get(key)
    ]
    if problems:
        raise CheckpointError(
            one_line(f"the weights in {folder} do not fit {name}: {'; '.join(problems)}")
        )
    nc = resolve("num_classes", user_nc, record.num_classes, None, None)
    classes = int(getattr(config, "num_labels", 0) or 0) or nc.value
    model = LogitsOf(hf_model)
    return model, type(hf_model).__name__, classes, nc.source, _preprocessing(folder, config)


def _from_folder(folder: Path, args: Mapping[str, Any], user_nc: int | None) -> tuple:
    """transformers' own loading, offline and without remote code: (config, model, info)."""
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    for key, value in args.items():
        setattr(config, key, value)
    if user_nc is not None:
        config.num_labels = user_nc
    # from_pretrained, not from_config: transformers maps the names a file was saved
    # under to its modules' current names (they differ across versions)
    model, info = AutoModelForImageClassification.from_pretrained(
        str(folder),
        config=config,
        local_files_only=True,
        trust_remote_code=False,
        output_loading_info=True,
        # reported in the loading info (and refused by the caller, with the keys named)
        # rather than raised with a pointer to a log wciaudit keeps quiet
        ignore_mismatched_sizes=True,
        dtype=torch.float32,
    )
    return config, model, info


@contextmanager
def _quiet() -> Iterator[None]:
    """transformers' progress bars and warnings off while it loads, then as they were
    (library code prints nothing)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _preprocessing(folder: Path, config: Any) -> LibraryPreprocessing:
    """Input size, mean/std, interpolation and crop from ``preprocessor_config.json``."""
    path = folder / PROCESSOR_FILE
    proc: dict[str, Any] = read_json_object(path) if path.is_file() else {}
    channels = getattr(config, "num_channels", None)
    channels = channels if isinstance(channels, int) and channels > 0 else 3
    mean = std = None
    if proc.get("do_normalize", True):
        mean = _stats(proc.get("image_mean"), "image_mean", path, channels, positive=False)
        std = _stats(proc.get("image_std"), "image_std", path, channels, positive=True)
        if mean is None or std is None:
            mean = std = None
    hw = _processor_size(proc) or _config_size(getattr(config, "image_size", None))
    crop = proc.get("crop_pct")
    return LibraryPreprocessing(
        source=TRANSFORMERS_CONFIG,
        input_size=(channels, *hw) if hw is not None else None,
        mean=mean,
        std=std,
        interpolation=_RESAMPLE.get(proc.get("resample"), "bilinear"),
        crop_pct=float(crop) if isinstance(crop, (int, float)) and 0 < crop <= 1 else 1.0,
    )


def _stats(
    value: Any, key: str, path: Path, channels: int, *, positive: bool
) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    ok = (
        isinstance(value, list)
        and len(value) in (1, channels)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )
    if not ok or (positive and any(v <= 0 for v in value)):
        rule = "positive numbers" if positive else "numbers"
        raise CheckpointError(
            f"{path}: {key} must be a list of {rule}, one per input channel ({channels})"
        )
    values = tuple(float(v) for v in value)
    return values * channels if len(values) == 1 and channels > 1 else values


def _processor_size(proc: Mapping[str, Any]) -> tuple[int, int] | None:
    """The processor's final image size: the centre crop if it crops, else the resize."""
    crop = proc.get("crop_size") if proc.get("do_center_crop", False) else None
    return _size_dict(crop) or _size_dict(proc.get("size"))


def _size_dict(size: Any) -> tuple[int, int] | None:
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size, size
    if not isinstance(size, Mapping):
        return None
    h, w = size.get("height"), size.get("width")
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        return h, w
    edge = size.get("shortest_edge")  # ConvNeXt, ResNet: resized, then cropped square
    if isinstance(edge, int) and edge > 0:
        return edge, edge
    return None


def _config_size(size: Any) -> tuple[int, int] | None:
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return int(size[0]), int(size[1])
    return None
