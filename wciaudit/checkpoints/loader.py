"""The entry point: a checkpoint path -> :class:`LoadedCheckpoint` (model + provenance)."""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import LoadOptions
from ..errors import CheckpointError, WCIAuditError
from ..result import CheckpointInfo
from ._text import one_line
from .arch import arch_from_metadata, parse_arch, same_arch
from .build import (
    Built,
    build_custom,
    build_timm,
    build_timm_folder,
    build_torchvision_spec,
    build_transformers_folder,
)
from .data_config import data_config
from .precedence import DEFAULT, FLAG
from .prefix import fit_attribute_prefix
from .readers import read_checkpoint
from .record import ArchSpec, CheckpointRecord
from .strict import load_strict, strip_wrapper_prefix
from .transformers_model import FORMAT as TRANSFORMERS_FORMAT


@dataclass
class LoadedCheckpoint:
    """A checkpoint ready for auditing.

    Attributes:
        model: the bare architecture (no input normalisation), float32, on CPU, in
            ``eval()`` mode, with every weight loaded strictly.
        info: provenance for the report: path, sha256 of the weights file, format,
            architecture, parameter count, classes, input size, mean/std, metadata.
        data_config: timm-style preprocessing: ``input_size`` as ``(C, H, W)`` or None,
            ``mean``/``std`` as tuples or None, ``interpolation``, ``crop_pct``,
            ``crop_mode``.
        dataset_hint: the metadata key ``dataset`` (e.g. ``"digits"``), or None.
        record: what the file says about itself (None for an in-memory module).
        sources: where ``input_size``, ``mean``, ``std`` and ``num_classes`` came from
            (``"flag"``, ``"checkpoint metadata"``, ``"timm config"``, ``"transformers
            preprocessor config"``, ``"default"``, or ``"none, torchvision model"``).
        notes: what loading changed, for the result's notes (a stripped key prefix).
    """

    model: nn.Module
    info: CheckpointInfo
    data_config: dict[str, Any] = field(default_factory=dict)
    dataset_hint: str | None = None
    record: CheckpointRecord | None = None
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_args: Mapping[str, Any] | str | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: Sequence[int] | None = None,
    options: LoadOptions | None = None,
) -> LoadedCheckpoint:
    """Read a checkpoint into a bare model plus its provenance, without running its code.

    Args:
        path: a ``.safetensors`` file, a ``.pt``/``.pth``/``.bin`` file, a Lightning
            ``.ckpt``, or a timm or transformers folder (``config.json`` +
            ``model.safetensors`` or ``pytorch_model.bin``).
        arch: a timm model name, ``torchvision:<builder>``, ``models.py:ClassName``,
            ``package.module:ClassName``, or ``models.py`` (class name from the metadata
            key ``arch``). Overrides the checkpoint's own architecture; required for
            ``.pt`` and ``.ckpt`` files.
        arch_args: keyword arguments for the constructor, as a dict or a JSON object
            string. Overrides metadata ``arch_args`` / config.json ``model_args``.
        num_classes: the number of classes; else metadata, else inferred from the
            classifier weight of a timm model.
        mean, std: per-channel input mean and std in raw input units; override the
            checkpoint's.
        input_size: the model's input ``(C, H, W)``; overrides metadata and timm's config.
        options: all of the above as one :class:`~wciaudit.config.LoadOptions`
            (the keywords are then ignored).

    Returns:
        The model (float32, CPU, eval mode), its :class:`CheckpointInfo`, a timm-style
        data config, the dataset the metadata names (or None), the record and the
        source of each preprocessing value.

    Raises:
        CheckpointError: the file is missing, unreadable, unsafe, or does not fit the
            architecture; the message is one line.
        ConfigError: an option is malformed (``arch_args`` JSON, ``mean``/``std``,
            ``num_classes``, ``input_size``, ``arch`` syntax).
    """
    if options is None:
        options = LoadOptions(
            arch=arch,
            arch_args=arch_args,
            num_classes=num_classes,
            mean=mean,
            std=std,
            input_size=input_size,
        )
    try:
        return _load(path, options)
    except WCIAuditError:
        raise
    except Exception as exc:  # a library error we did not foresee: still one clear line
        raise CheckpointError(
            one_line(f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}")
        ) from exc


def _load(path: str | os.PathLike[str], options: LoadOptions) -> LoadedCheckpoint:
    user_arch = parse_arch(options.arch, user=True) if options.arch is not None else None
    record, state_dict = read_checkpoint(path)
    state_dict = strip_wrapper_prefix(state_dict)
    built = _build(Path(path), record, user_arch, options, state_dict)
    if built.state_dict is not None:  # loaded by its library under the model's own names
        state_dict = built.state_dict
    state_dict, prefix_note = fit_attribute_prefix(
        built.model, state_dict, others_allowed=record.format == "lightning"
    )
    load_strict(built.model, state_dict, built.label)
    model = built.model.float().cpu().eval()

    config, sources = data_config(
        model, built.is_timm, record, options, built.preprocessing, built.none_source
    )
    sources["num_classes"] = built.num_classes_source
    input_size, mean, std = config["input_size"], config["mean"], config["std"]
    info = CheckpointInfo(
        path=str(path),
        sha256=record.sha256,
        format=record.format,
        arch=built.label,
        num_params=sum(p.numel() for p in model.parameters()),  # tied weights counted once
        num_classes=built.num_classes,
        input_size=list(input_size) if input_size is not None else None,
        mean=list(mean) if mean is not None else None,
        std=list(std) if std is not None else None,
        metadata=dict(record.metadata),
    )
    return LoadedCheckpoint(
        model=model,
        info=info,
        data_config=config,
        dataset_hint=record.dataset_hint,
        record=record,
        sources=sources,
        notes=[prefix_note] if prefix_note else [],
    )


def _build(
    path: Path,
    record: CheckpointRecord,
    user_arch: ArchSpec | None,
    options: LoadOptions,
    state_dict: dict[str, torch.Tensor],
) -> Built:
    """The untrained model: the timm folder's own, the user's, or the metadata's."""
    # a dict or None after LoadOptions' checks
    user_args = options.arch_args if isinstance(options.arch_args, Mapping) else None
    meta_args = record.arch_args
    if user_arch is not None and (
        (record.folder is not None and user_arch.target != record.arch)
        or (record.folder is None and not same_arch(user_arch, record))
    ):
        meta_args = None  # the checkpoint's arch_args describe another architecture
    same_as_folder = user_arch is None or (
        user_arch.kind == "timm" and user_arch.target == record.arch
    )
    if record.format == TRANSFORMERS_FORMAT and user_arch is None:
        return build_transformers_folder(record, user_args, options.num_classes)
    if record.format == "timm-folder" and same_as_folder:
        return build_timm_folder(record, user_args, options.num_classes)
    spec = user_arch or arch_from_metadata(record, path)
    if spec.kind == "torchvision":
        return build_torchvision_spec(spec, record, meta_args, user_args, options.num_classes)
    if spec.kind == "timm":
        return build_timm(
            spec.target, record, meta_args, state_dict, user_args, options.num_classes
        )
    return build_custom(spec, record, meta_args, user_args, options.num_classes)


def loaded_from_module(module: nn.Module, options: LoadOptions) -> LoadedCheckpoint:
    """A copy of an in-memory module, hashed by its state_dict; only mean, std and
    input size of the options apply (the module is already built)."""
    model = copy.deepcopy(module).float().cpu().eval()
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    info = CheckpointInfo(
        path="<in-memory module>",
        sha256=digest.hexdigest(),
        format="module",
        arch=type(module).__name__,
        num_params=sum(p.numel() for p in model.parameters()),
        mean=list(options.mean) if options.mean is not None else None,
        std=list(options.std) if options.std is not None else None,
        input_size=list(options.input_size) if options.input_size is not None else None,
    )
    source = {
        key: FLAG if getattr(options, key) is not None else DEFAULT
        for key in ("input_size", "mean", "std")
    }
    return LoadedCheckpoint(
        model=model, info=info, data_config={"input_size": options.input_size}, sources=source
    )
