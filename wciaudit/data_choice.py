"""Which data a scan runs on, and how it is fitted to the model (SPEC: the bare command).

Without ``--data`` the scan uses the dataset the checkpoint names, or the shipped sample
when the model takes its input shape as it is; a model that needs another shape is an
error, not a silent resize. Resizing and normalisation are written to the notes, with
the input size, mean and std and where each came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .checkpoints import LoadedCheckpoint
from .checkpoints.precedence import NONE_TORCHVISION
from .config import ScanConfig
from .data import (
    SAMPLE_NAMES,
    Splits,
    check_labels_fit,
    fit_to_model,
    load_data,
    to_channels_first,
)
from .errors import ConfigError, DataError
from .model import AuditedModel, eval_mode
from .model_inputs import mismatch_words, refusing_layer
from .retry import is_out_of_memory

__all__ = ["DATA_FORMS", "choose_data", "check_model_accepts"]

DATA_FORMS = "--data sample | file.npz | DIR (ImageFolder with train/ and test/ or val/) | cifar10:DIR | cifar100:DIR"


def choose_data(
    data: Any, loaded: LoadedCheckpoint, cfg: ScanConfig, notes: list[str]
) -> tuple[Splits, str]:
    """The data to audit on, and why it was chosen (SPEC: the bare command).

    Only the shipped sample is adapted to the model's input size, and only when asked
    for (``--data sample``, or the checkpoint names it); without ``--data``, a model
    that needs another input shape is an error rather than a silent resize.
    """
    kwargs = dict(
        data_config=loaded.data_config,
        lo=cfg.lo,
        hi=cfg.hi,
        train_samples=cfg.train_samples,
        test_samples=cfg.test_samples,
        seed=cfg.seed,
    )
    input_size = loaded.data_config.get("input_size") if loaded.data_config else None
    if isinstance(data, Splits):
        splits, reason = data, "given as tensors"
    elif isinstance(data, Mapping):
        splits, reason = load_data(data, **kwargs), "given as arrays"
    elif data is not None:
        splits, reason = load_data(str(data), **kwargs), f"--data {data}"
    else:
        splits, reason = _default_data(loaded, input_size, kwargs)
    if input_size is None and not _accepts(loaded.model, splits):
        # the model's input size is unknown (a .pt or an in-memory module): try the
        # channels-first reading of (N, H, W) or channels-last data before refusing it
        fitted, _ = to_channels_first(splits)
        if fitted is not splits and _accepts(loaded.model, fitted):
            splits = fitted
        else:
            read_as_rgb = splits.name.startswith("imagefolder:")
            with eval_mode(loaded.model):
                check_model_accepts(
                    loaded.model, splits, torch.device("cpu"), torch.float32, read_as_rgb
                )
    notes.extend(n for n in splits.notes if n not in notes)
    if splits.name == "digits":
        # a user's own data must fit the model as it is (ImageFolder data is already
        # transformed to the model's input size by the loader)
        splits, note = fit_to_model(splits, input_size)
        if note:
            reason += f"; {note}"
            notes.append(f"{note} ({_size_words(loaded)})")
    if input_size is not None and splits.name.startswith("imagefolder:"):
        notes.append(f"images resized and cropped to {_shape(input_size)} ({_size_words(loaded)})")
    if loaded.info.mean is not None and loaded.info.std is not None:
        source = loaded.sources.get("mean", "given")
        notes.append(
            f"inputs normalised inside the model with mean {loaded.info.mean} and std "
            f"{loaded.info.std} (from {source}); eps is in raw input units"
        )
    elif loaded.sources.get("mean") == NONE_TORCHVISION:
        notes.append(
            "no input normalisation: a torchvision model has none of its own and neither "
            "--mean/--std nor the checkpoint's metadata gave one"
        )
    if not (splits.has_train or splits.has_test):
        raise DataError("the dataset has neither a train nor a test split")
    return splits, reason


def _default_data(
    loaded: LoadedCheckpoint, input_size: Any, kwargs: dict[str, Any]
) -> tuple[Splits, str]:
    """No ``--data``: the shipped sample, if the checkpoint names it or the model takes
    its input shape as it is."""
    hint = loaded.dataset_hint
    splits = load_data("sample", **kwargs)
    if hint is not None and hint.lower() in SAMPLE_NAMES:
        return (
            splits,
            f"no --data given; the checkpoint's metadata names dataset {hint!r}, which wciaudit ships",
        )
    named = f" (its metadata names dataset {hint!r}, which wciaudit does not ship)" if hint else ""
    have = splits.input_shape
    if input_size is not None and list(input_size) != list(have):
        raise DataError(
            f"no --data given and the model takes {_shape(input_size)} inputs "
            f"({_size_words(loaded)}), not the shipped sample's {_shape(have)}{named}: pass "
            f"{DATA_FORMS}, --data sample to resize the sample, or --weights-only"
        )
    if not _accepts(loaded.model, splits):
        raise DataError(
            f"no usable data for this model{named}: pass {DATA_FORMS}, or --weights-only"
        )
    return (
        splits,
        "no --data given; the model accepts the shipped sample dataset's input shape" + named,
    )


def _shape(size: Any) -> str:
    return "x".join(str(int(s)) for s in size)


def _size_words(loaded: LoadedCheckpoint) -> str:
    size = loaded.data_config.get("input_size") if loaded.data_config else None
    source = loaded.sources.get("input_size", "given")
    return f"input size {_shape(size)} from {source}" if size is not None else "input size unknown"


def _accepts(model: nn.Module, splits: Splits) -> bool:
    """Whether the bare model (CPU, float32) takes the data: the check below, as a bool."""
    try:
        with eval_mode(model):
            check_model_accepts(model, splits, torch.device("cpu"), torch.float32)
    except DataError:
        return False
    return True


def check_model_accepts(
    net: nn.Module,
    splits: Splits,
    device: torch.device,
    dtype: torch.dtype,
    images_read_as_rgb: bool = False,
) -> str | None:
    """Raise DataError unless ``net`` takes the data and returns (N, C) logits with every
    label below C; return a note when it has more outputs than the labels use.

    A refusal names the data's shape, what the refusing layer wants and the option that
    fixes it (:mod:`wciaudit.model_inputs`); ``images_read_as_rgb`` says the data is an
    ImageFolder read as RGB because the model's input size was unknown.
    """
    x = (splits.x_train if splits.has_train else splits.x_test)[:2].to(device, dtype)
    try:
        with torch.no_grad():
            out = net(x)
    except Exception as exc:  # a user model may raise anything on a wrong shape
        if is_out_of_memory(exc):  # the inputs are fine; the device is full
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"out of memory on {device} for a forward pass of 2 examples ({first}); free "
                "memory on the device or use --device cpu"
            ) from None
        refusal = refusing_layer(net, x)
        if refusal is not None:
            if isinstance(net, AuditedModel):  # name layers as the user's model does
                refusal = replace(refusal, name=refusal.name.removeprefix("model."))
            words = mismatch_words(
                splits.input_shape, refusal, images_read_as_rgb=images_read_as_rgb
            )
            raise DataError(f"the model does not accept the data: {words}") from None
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"the model does not accept inputs of shape {list(x.shape[1:])}: {msg}"
        ) from None
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise DataError(
            f"the model must return logits of shape (N, classes); it returned {list(out.shape)}"
        )
    labels = [y for y in (splits.y_train, splits.y_test) if y is not None and len(y)]
    return check_labels_fit(labels, int(out.shape[1])) if labels else None
