"""Weight files -> (:class:`CheckpointRecord`, state_dict), without running their code.

- ``.safetensors``: the header is checked in Python (:mod:`wciaudit.safetensors_header`)
  before the library reads the tensors.
- ``.pt``/``.pth``/``.bin``/``.ckpt``: ``torch.load(..., weights_only=True)`` only; a
  bare state_dict or one under ``state_dict``/``model``/``model_state_dict``. A Lightning
  checkpoint (``.ckpt``, or any of these holding ``pytorch-lightning_version``) has the
  format ``"lightning"``: its ``state_dict`` is the whole LightningModule's.
- a folder: ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``), as
  timm's ``save_for_hf`` writes it (``"timm-folder"``, config key ``architecture``) or
  transformers' ``save_pretrained`` (``"transformers-folder"``, ``architectures``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from ..errors import CheckpointError
from ..safetensors_header import parse_header
from ._text import MAX_LISTED_KEYS, one_line, read_json_object
from .memory import check_fits_in_memory
from .record import CheckpointRecord, bounded_metadata, int_or_none, parse_metadata, str_or_none
from .transformers_model import FORMAT as TRANSFORMERS_FORMAT
from .transformers_model import architecture_name, is_transformers_config, label_count

SAFETENSORS_SUFFIX = ".safetensors"
LIGHTNING_SUFFIX = ".ckpt"
PYTORCH_SUFFIXES = (".pt", ".pth", ".bin", LIGHTNING_SUFFIX)
#: the top-level key by which Lightning marks its checkpoints (whatever their suffix)
LIGHTNING_MARK = "pytorch-lightning_version"
#: the file suffixes a checkpoint may have (a timm folder is a folder)
CHECKPOINT_SUFFIXES = (SAFETENSORS_SUFFIX, *PYTORCH_SUFFIXES)
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

StateDict = dict[str, torch.Tensor]


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[CheckpointRecord, StateDict]:
    """Read a checkpoint file or timm folder: its record and its tensors.

    Raises:
        CheckpointError: missing, unsupported, unreadable, unsafe or malformed; one line.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _read_timm_folder(path)
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        raw, state_dict = _read_safetensors(path)
        fields = parse_metadata(raw, where=str(path))
        return _record(path, path, "safetensors", raw, state_dict, fields), state_dict
    if suffix in PYTORCH_SUFFIXES:
        raw, state_dict = _read_pytorch(path)
        fmt = "lightning" if suffix == LIGHTNING_SUFFIX or LIGHTNING_MARK in raw else "pytorch"
        return _record(path, path, fmt, raw, state_dict, _pytorch_fields(raw, path)), state_dict
    raise CheckpointError(
        f"unsupported checkpoint type {suffix or '(no extension)'!r} for {path}; supported: "
        f"{SAFETENSORS_SUFFIX}, {', '.join(PYTORCH_SUFFIXES)}, or a timm or transformers "
        "folder with config.json + model.safetensors"
    )


def _record(
    path: Path,
    weights: Path,
    fmt: str,
    raw: Mapping[str, str],
    state_dict: StateDict,
    fields: dict[str, Any],
) -> CheckpointRecord:
    return CheckpointRecord(
        path=path,
        weights_path=weights,
        format=fmt,
        sha256=_sha256(weights),
        tensor_names=tuple(state_dict),
        raw_metadata=MappingProxyType(dict(raw)),
        metadata=bounded_metadata(raw),
        **fields,
    )


def _pytorch_fields(raw: Mapping[str, str], path: Path) -> dict[str, Any]:
    try:
        fields = parse_metadata(raw, where=str(path))
    except CheckpointError:
        # a training script's own bookkeeping, not metadata written for us: provenance only
        fields = {"dataset_hint": str_or_none(raw.get("dataset"))}
    # A .pt file's architecture must come from the user (SPEC: nothing a checkpoint
    # names is trusted as code), so the wrapper's own "arch" entry is provenance only.
    fields["arch"] = None
    fields["arch_args"] = None
    return fields


def _read_safetensors(path: Path) -> tuple[dict[str, str], StateDict]:
    from safetensors import safe_open

    # every length, dtype and offset checked here, in Python, before the library reads
    # (the header's own key order, not the library's hash order: reports are reproducible)
    raw_meta = parse_header(path).metadata
    check_fits_in_memory(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            state_dict = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types, plus OSError
        raise CheckpointError(
            one_line(f"not a valid safetensors file: {path} ({type(exc).__name__}: {exc})")
        ) from None
    return {str(k): str(v) for k, v in raw_meta.items()}, state_dict


def _read_pytorch(path: Path) -> tuple[dict[str, str], StateDict]:
    if path.stat().st_size == 0:
        raise CheckpointError(f"not a valid PyTorch checkpoint: {path} (the file is empty)")
    check_fits_in_memory(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(_torch_load_message(path, exc)) from None
    state_dict, extra = _find_state_dict(obj, path)
    raw_meta = {
        str(k): v if isinstance(v, str) else json.dumps(v)
        for k, v in extra.items()
        if isinstance(v, (str, int, float, bool))
        or (isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v))
    }
    return raw_meta, state_dict


def _torch_load_message(path: Path, exc: Exception) -> str:
    text = str(exc)
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, flags=re.S)
    reason = detail.group(1) if detail else f"{type(exc).__name__}: {text}"
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", reason)
    if unsafe:
        return one_line(
            f"refusing {path}: it is not a weights-only PyTorch checkpoint (its pickle calls "
            f"{unsafe.group(1)}, and wciaudit never runs code from a checkpoint); re-save it "
            "with torch.save(model.state_dict(), ...) or as .safetensors"
        )
    if isinstance(exc, EOFError) and not text:
        reason = "the file ends early"
    return one_line(f"not a valid PyTorch checkpoint: {path} ({reason})")


def _find_state_dict(obj: Any, path: Path) -> tuple[StateDict, dict[str, Any]]:
    """A bare state_dict, or one under ``state_dict``/``model``/``model_state_dict``."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state_dict; save model.state_dict() instead"
        )
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), {}
    for key in ("state_dict", "model", "model_state_dict"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner:
            bad = next((k for k, v in inner.items() if not isinstance(v, torch.Tensor)), None)
            if bad is not None:
                raise CheckpointError(
                    one_line(
                        f"{path}: entry {key}[{bad!r}] is not a tensor, so {key!r} is not a state_dict"
                    )
                )
            return dict(inner), {k: v for k, v in obj.items() if k != key}
    keys = ", ".join(repr(k) for k in list(obj)[:MAX_LISTED_KEYS])
    raise CheckpointError(
        one_line(
            f"{path} holds no state_dict: expected tensors, or a dict with one under "
            f"'state_dict' or 'model' (found keys {keys or 'none'})"
        )
    )


def _folder_weights(folder: Path) -> Path | None:
    return next((folder / n for n in FOLDER_WEIGHTS if (folder / n).is_file()), None)


def _read_timm_folder(folder: Path) -> tuple[CheckpointRecord, StateDict]:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"folder {folder} has no config.json; a timm model folder holds config.json and "
            "model.safetensors (as timm's save_for_hf writes it)"
        )
    weights = _folder_weights(folder)
    if weights is None:
        raise CheckpointError(
            f"folder {folder} has config.json but no weights; expected {' or '.join(FOLDER_WEIGHTS)}"
        )
    config = read_json_object(config_path)
    if weights.suffix == SAFETENSORS_SUFFIX:
        file_meta, state_dict = _read_safetensors(weights)
        parse_metadata(file_meta, where=str(weights))  # malformed metadata is still refused
    else:
        _, state_dict = _read_pytorch(weights)
    dataset = config.get("dataset")
    if is_transformers_config(config):
        fields = {
            "arch": architecture_name(config),
            "num_classes": label_count(config),
            "eps": _text_or_none(config.get("eps")),
            "norm": str_or_none(config.get("norm")),
            "dataset_hint": dataset if isinstance(dataset, str) and dataset else None,
            "folder": folder,
        }
        record = _record(folder, weights, TRANSFORMERS_FORMAT, _flatten(config), state_dict, fields)
        return record, state_dict
    arch = str_or_none(config.get("architecture"))
    if arch is None:
        raise CheckpointError(
            f"{config_path} names no architecture: neither timm's key 'architecture' nor "
            "transformers' 'architectures' / 'model_type'"
        )
    model_args = config.get("model_args")
    fields = {
        "arch": arch,
        "arch_args": MappingProxyType(model_args) if isinstance(model_args, dict) else None,
        "num_classes": int_or_none(config.get("num_classes")),
        # mean, std and input size: timm's pretrained_cfg says these, through the model
        "eps": _text_or_none(config.get("eps")),
        "norm": str_or_none(config.get("norm")),
        "dataset_hint": dataset if isinstance(dataset, str) and dataset else None,
        "folder": folder,
    }
    record = _record(folder, weights, "timm-folder", _flatten(config), state_dict, fields)
    return record, state_dict


def _text_or_none(value: Any) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return json.dumps(value)
    return str_or_none(value)


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """config.json -> ``{"pretrained_cfg.mean": "[0.5]", ...}``: nested objects dotted."""
    out: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, prefix=f"{name}."))
        elif isinstance(value, str):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    except OSError as exc:
        raise CheckpointError(one_line(f"cannot read {path}: {exc}")) from None
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a checkpoint's weights file: the file itself, or a timm folder's
    ``model.safetensors`` / ``pytorch_model.bin`` (the value the scan reports).

    Raises:
        CheckpointError: no such file, or a folder without weights.
    """
    p = Path(path)
    weights = _folder_weights(p) if p.is_dir() else p
    if weights is None or not weights.is_file():
        raise CheckpointError(f"no checkpoint weights at {p}")
    return _sha256(weights)


def read_epoch(path: str | os.PathLike[str]) -> float | None:
    """The ``epoch`` a checkpoint states about itself, or None.

    Read from the safetensors header metadata, a timm folder's ``config.json``, or the
    top level of a ``.pt`` dict (``torch.load(weights_only=True)``); nothing else is run.
    """
    p = Path(path)
    value: Any = None
    try:
        if p.is_dir():
            value = json.loads((p / "config.json").read_text(encoding="utf-8")).get("epoch")
        elif p.suffix == SAFETENSORS_SUFFIX:
            value = parse_header(p).metadata.get("epoch")
        elif p.suffix in PYTORCH_SUFFIXES:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
            value = obj.get("epoch") if isinstance(obj, dict) else None
    except Exception:  # an unreadable header only means "no epoch"; the scan reports the file
        return None
    try:
        epoch = float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
    return epoch if epoch is not None and math.isfinite(epoch) else None
