"""What a checkpoint says about itself, before any model is built: an immutable record.

A :class:`CheckpointRecord` is read once per file (:func:`~.readers.read_checkpoint`):
its format, tensor names, metadata (full for parsing, bounded for the report), the
architecture it names, the values it states (classes, mean/std, input size, threat
model), and the sha256 of its weights file. Nothing in it is ever run as code.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import CheckpointError
from ._text import clip, json_value

# Bounds on what is copied into the report: metadata is provenance, not payload.
_MAX_METADATA_KEYS = 100
_MAX_METADATA_KEY_CHARS = 200
_MAX_METADATA_VALUE_CHARS = 2000


@dataclass(frozen=True)
class ArchSpec:
    """An architecture reference: a timm name, a ``.py`` file, or a module, plus a class."""

    kind: str  # "timm", "torchvision", "file" or "module"
    target: str  # timm or torchvision name, .py path, or dotted module name
    class_name: str | None = None


@dataclass(frozen=True)
class CheckpointRecord:
    """What one checkpoint file (or timm folder) states; read-only.

    Attributes:
        path: the path as given (file or folder).
        weights_path: the file the tensors come from.
        format: ``"safetensors"``, ``"pytorch"``, ``"lightning"`` (a Lightning ``.ckpt``),
            ``"timm-folder"`` or ``"transformers-folder"``.
        sha256: hex digest of ``weights_path``, computed once.
        tensor_names: the names in the file, in file order.
        raw_metadata: every metadata string, for parsing.
        metadata: a bounded copy for the report.
        arch, arch_args, num_classes, mean, std, input_size: what the metadata states
            (None where it says nothing, or where it cannot be trusted: a ``.pt`` file's
            own ``arch`` is provenance only).
        eps, norm: the threat model the metadata states, as written (parsed by the scan).
        dataset_hint: the metadata key ``dataset``, or None.
        folder: the timm folder (built through timm's ``local-dir:`` source) or
            transformers folder (built from its config), or None.
    """

    path: Path
    weights_path: Path
    format: str
    sha256: str
    tensor_names: tuple[str, ...]
    raw_metadata: Mapping[str, str]
    metadata: Mapping[str, str]
    arch: str | None = None
    arch_args: Mapping[str, Any] | None = None
    num_classes: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: tuple[int, ...] | None = None
    eps: str | None = None
    norm: str | None = None
    dataset_hint: str | None = None
    folder: Path | None = None


def parse_metadata(meta: Mapping[str, str], where: str) -> dict[str, Any]:
    """The typed fields of :class:`CheckpointRecord` from string metadata (safetensors
    header or a ``.pt`` wrapper's entries).

    Raises:
        CheckpointError: a key this module reads holds a malformed value.
    """
    fields: dict[str, Any] = {
        "dataset_hint": str_or_none(meta.get("dataset")),
        "arch": str_or_none(meta.get("arch")),
        "eps": str_or_none(meta.get("eps")),
        "norm": str_or_none(meta.get("norm")),
    }
    if "arch_args" in meta:
        args = json_value(meta["arch_args"], "arch_args", where)
        if not isinstance(args, dict):
            raise CheckpointError(f"metadata key 'arch_args' in {where} must be a JSON object")
        fields["arch_args"] = MappingProxyType(args)
    if "num_classes" in meta:
        value = json_value(meta["num_classes"], "num_classes", where)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(
                f"metadata key 'num_classes' in {where} must be a non-negative integer"
            )
        fields["num_classes"] = value
    for key in ("mean", "std"):
        if key in meta:
            fields[key] = _metadata_stats(meta[key], key, where)
    if "input_size" in meta:
        size = json_value(meta["input_size"], "input_size", where)
        if (
            not isinstance(size, list)
            or not size
            or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in size)
        ):
            raise CheckpointError(
                f"metadata key 'input_size' in {where} must be a JSON list of positive "
                "integers, the shape of one input: [C, H, W] for images, [C, L] for signals, "
                "[F] for vectors"
            )
        fields["input_size"] = tuple(size)
    return fields


def _metadata_stats(text: str, key: str, where: str) -> tuple[float, ...]:
    value = json_value(text, key, where)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) for v in value)
        or (key == "std" and any(v <= 0 for v in value))
    ):
        rule = "positive numbers" if key == "std" else "finite numbers"
        raise CheckpointError(f"metadata key {key!r} in {where} must be a JSON list of {rule}")
    return tuple(float(v) for v in value)


def bounded_metadata(meta: Mapping[str, str]) -> Mapping[str, str]:
    """A copy for the report: at most 100 keys, keys and values clipped."""
    out: dict[str, str] = {}
    for key, value in itertools.islice(meta.items(), _MAX_METADATA_KEYS):
        out[clip(str(key), _MAX_METADATA_KEY_CHARS)] = clip(str(value), _MAX_METADATA_VALUE_CHARS)
    return MappingProxyType(out)


def str_or_none(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
