"""Architectures -> untrained ``nn.Module``: timm by name, a timm folder, a transformers
folder, a torchvision builder, or the user's class.

Constructor arguments come from the user (``arch_args``) or else the checkpoint; the
number of classes follows :func:`~.precedence.resolve` (flag > metadata > the
constructor's own arguments > the classifier weight timm's config names).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ._text import one_line
from .arch import class_name_from_metadata
from .data_config import LibraryPreprocessing
from .precedence import DEFAULT, FLAG, METADATA, NONE_TORCHVISION, Resolved, resolve
from .record import ArchSpec, CheckpointRecord
from .torchvision_model import build_torchvision
from .transformers_model import build_transformers
from .user_code import accepts, find_class, import_file, import_module

# create_model options that would fetch or read weights behind our back
_FORBIDDEN_TIMM_ARGS = (
    "pretrained",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "checkpoint_path",
    "cache_dir",
)


@dataclass(frozen=True)
class Built:
    """A freshly built model, its label for the report, and its number of classes
    (with the source of that number)."""

    model: nn.Module
    label: str
    is_timm: bool
    num_classes: int | None
    num_classes_source: str
    preprocessing: LibraryPreprocessing | None = None
    none_source: str = DEFAULT
    #: the weights the library loaded itself, under the model's names (transformers)
    state_dict: dict[str, torch.Tensor] | None = None


def build_timm(
    name: str,
    record: CheckpointRecord,
    meta_args: Mapping[str, Any] | None,
    state_dict: Mapping[str, torch.Tensor],
    user_args: Mapping[str, Any] | None,
    user_nc: int | None,
) -> Built:
    """``timm.create_model(name, pretrained=False)`` sized to fit ``state_dict``."""
    import timm
    from timm.models import get_pretrained_cfg

    args = user_args if user_args is not None else (meta_args or {})
    kwargs = _timm_kwargs(args, "the command line" if user_args is not None else "the checkpoint")
    args_nc = kwargs.pop("num_classes", None)
    cfg = get_pretrained_cfg(name)
    head_nc = _head_classes(cfg.classifier, state_dict) if cfg is not None else None
    nc = _classes(user_nc, record.num_classes, args_nc, user_args is not None, head_nc)
    if "in_chans" not in kwargs and cfg is not None:
        in_chans = _first_conv_channels(cfg.first_conv, state_dict)
        if in_chans is not None:
            kwargs["in_chans"] = in_chans
    if nc.value is not None:
        kwargs["num_classes"] = nc.value
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except Exception as exc:
        raise CheckpointError(
            one_line(
                f"cannot build timm model {name!r} with arguments {kwargs}: {type(exc).__name__}: {exc}"
            )
        ) from None
    return Built(model, name, True, getattr(model, "num_classes", nc.value), nc.source)


def build_timm_folder(
    record: CheckpointRecord, user_args: Mapping[str, Any] | None, user_nc: int | None
) -> Built:
    """Build through timm's own ``local-dir:`` source, which reads config.json."""
    import timm

    folder = record.folder
    if folder is None:  # only reached for folders; keeps type checkers informed
        raise CheckpointError("internal error: not a timm folder")
    name = record.arch or ""
    if not timm.is_model(name):
        raise CheckpointError(
            one_line(
                f"{folder / 'config.json'} names architecture {name!r}, which this "
                f"timm ({timm.__version__}) does not know"
            )
        )
    kwargs = _timm_kwargs(user_args or {}, "the command line")
    if user_nc is not None:
        kwargs["num_classes"] = user_nc
    try:
        # pretrained=False: timm reads config.json only; weights are loaded strictly later
        model = timm.create_model(f"local-dir:{folder}", pretrained=False, **kwargs)
    except Exception as exc:
        raise CheckpointError(
            one_line(
                f"cannot build the timm model in {folder} ({name}): {type(exc).__name__}: {exc}"
            )
        ) from None
    nc = resolve("num_classes", user_nc, record.num_classes, None, None)
    return Built(model, name, True, getattr(model, "num_classes", nc.value), nc.source)


def build_transformers_folder(
    record: CheckpointRecord, user_args: Mapping[str, Any] | None, user_nc: int | None
) -> Built:
    """A transformers ``save_pretrained`` folder (:mod:`.transformers_model`)."""
    model, label, classes, source, preprocessing = build_transformers(record, user_args, user_nc)
    loaded = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Built(
        model, label, False, classes, source, preprocessing=preprocessing, state_dict=loaded
    )


def build_torchvision_spec(
    spec: ArchSpec,
    record: CheckpointRecord,
    meta_args: Mapping[str, Any] | None,
    user_args: Mapping[str, Any] | None,
    user_nc: int | None,
) -> Built:
    """``torchvision:<name>`` with its arguments; no normalisation assumed."""
    kwargs = dict(user_args if user_args is not None else (meta_args or {}))
    nc = _classes(user_nc, record.num_classes, kwargs.get("num_classes"), user_args is not None)
    if nc.value is not None:
        kwargs["num_classes"] = nc.value
    where = "the command line" if user_args is not None else "the checkpoint"
    model = build_torchvision(spec.target, kwargs, where)
    label = f"torchvision:{spec.target}"
    return Built(model, label, False, nc.value, nc.source, none_source=NONE_TORCHVISION)


def build_custom(
    spec: ArchSpec,
    record: CheckpointRecord,
    meta_args: Mapping[str, Any] | None,
    user_args: Mapping[str, Any] | None,
    user_nc: int | None,
) -> Built:
    """The user's class from ``models.py`` or ``package.module``, with its arguments."""
    from_metadata = spec.class_name is None
    if spec.kind == "file":
        file = Path(spec.target)
        module = import_file(file)
        where = file.name
    else:
        module = import_module(spec.target)
        where = spec.target
    class_name = spec.class_name or class_name_from_metadata(record, spec.target)
    cls = find_class(module, class_name, where, defined_here=from_metadata)
    label = f"{where}:{class_name}"

    kwargs = dict(user_args if user_args is not None else (meta_args or {}))
    if user_nc is not None and "num_classes" not in kwargs and accepts(cls, "num_classes"):
        kwargs["num_classes"] = user_nc
    try:
        model = cls(**kwargs)
    except Exception as exc:
        raise CheckpointError(
            one_line(f"cannot build {label} with arguments {kwargs}: {type(exc).__name__}: {exc}")
        ) from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{label} did not build an nn.Module")
    nc = _classes(user_nc, record.num_classes, kwargs.get("num_classes"), user_args is not None)
    return Built(model, label, False, nc.value, nc.source)


def _classes(
    user_nc: int | None,
    meta_nc: int | None,
    args_nc: Any,
    args_from_user: bool,
    head_nc: int | None = None,
) -> Resolved:
    """Classes: the flag, the metadata's ``num_classes``, the constructor arguments'
    (counted as the flag's or the metadata's, by where they came from), timm's head."""
    nc = resolve("num_classes", user_nc, meta_nc, None, None)
    if nc.value is None and isinstance(args_nc, int) and not isinstance(args_nc, bool):
        return Resolved("num_classes", args_nc, FLAG if args_from_user else METADATA)
    if nc.value is None:
        return resolve("num_classes", None, None, head_nc, None)
    return nc


def _timm_kwargs(args: Mapping[str, Any], where: str) -> dict[str, Any]:
    kwargs = dict(args)
    bad = [k for k in _FORBIDDEN_TIMM_ARGS if k in kwargs]
    if bad:
        raise CheckpointError(
            f"arch_args from {where} may not set {', '.join(bad)}: wciaudit loads weights only "
            "from the checkpoint and never downloads"
        )
    return kwargs


def _named_weight(
    modules: Any, state_dict: Mapping[str, torch.Tensor], min_dim: int
) -> torch.Tensor | None:
    """The weight of the first module ``modules`` names (timm: a name or a list of names)
    that the state dict holds with at least ``min_dim`` dimensions."""
    names = [modules] if isinstance(modules, str) else list(modules or [])
    for name in names:
        weight = state_dict.get(f"{name}.weight")
        if weight is None:  # under a training wrapper's attribute (``model.head.fc.weight``)
            under = [v for k, v in state_dict.items() if k.endswith(f".{name}.weight")]
            weight = under[0] if len(under) == 1 else None
        if weight is not None and weight.dim() >= min_dim:
            return weight
    return None


def _head_classes(classifier: Any, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Classes from the classifier weight that timm's ``pretrained_cfg`` names."""
    weight = _named_weight(classifier, state_dict, 1)
    return None if weight is None else int(weight.shape[0])


def _first_conv_channels(first_conv: Any, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Input channels from the first conv's weight ``[out, in, k, k]``, if not the default 3."""
    weight = _named_weight(first_conv, state_dict, 3)
    if weight is None or int(weight.shape[1]) == 3:
        return None
    return int(weight.shape[1])
