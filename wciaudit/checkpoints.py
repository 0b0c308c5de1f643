"""Checkpoint formats -> bare ``nn.Module`` + provenance (SPEC: "The model under audit").

Four forms are read, and none of them can make wciaudit run code from the checkpoint:

- ``"safetensors"``: a ``.safetensors`` state_dict; the architecture comes from the
  ``arch`` argument or the file's metadata (key ``arch``, plus ``arch_args``,
  ``num_classes``, ``mean``, ``std``, ``input_size``, ``dataset``).
- ``"timm-folder"``: a folder with ``config.json`` and ``model.safetensors`` (or
  ``pytorch_model.bin``), as timm's ``save_for_hf`` writes it.
- ``"pytorch"``: a ``.pt``/``.pth``/``.bin`` state_dict (bare, or under ``state_dict``
  or ``model``), read only with ``torch.load(..., weights_only=True)``.
- a custom architecture, ``arch="models.py:ClassName"`` or ``"package.module:ClassName"``,
  for any of the weight files above. Only a file or module the *user* names is
  imported; a name found in checkpoint metadata is at most looked up as a class
  inside that user-named module, never imported.

Weights are loaded strictly (every key, every shape), must be finite, and are cast to
float32. Every failure is a :class:`~wciaudit.errors.CheckpointError` (or a
:class:`~wciaudit.errors.ConfigError` for a malformed option) with a one-line message.

Example:
    >>> import timm, safetensors.torch, tempfile, os, torch
    >>> net = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    >>> path = os.path.join(tempfile.mkdtemp(), "net.safetensors")
    >>> safetensors.torch.save_file(net.state_dict(), path, metadata={"arch": "test_resnet"})
    >>> loaded = load_checkpoint(path)
    >>> loaded.info.arch, loaded.info.num_classes, loaded.data_config["input_size"][0]
    ('test_resnet', 10, 1)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import itertools
import json
import keyword
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ConfigError, WCIAuditError
from .result import CheckpointInfo
from .safetensors_header import parse_header

__all__ = [
    "LoadedCheckpoint",
    "load_checkpoint",
    "MAX_CHECKPOINT_BYTES",
    "PYTORCH_SUFFIXES",
    "SAFETENSORS_SUFFIX",
]

SAFETENSORS_SUFFIX = ".safetensors"
PYTORCH_SUFFIXES = (".pt", ".pth", ".bin")
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

# Bounds on what is copied into the report: metadata is provenance, not payload.
_MAX_METADATA_KEYS = 100
_MAX_METADATA_KEY_CHARS = 200
_MAX_METADATA_VALUE_CHARS = 2000
_MAX_LISTED_KEYS = 5
#: refuse weight files larger than this, whatever the memory (bytes)
MAX_CHECKPOINT_BYTES = 64 * 2**30
# Loading holds the file's tensors and the model's own copy at once.
_LOAD_MEMORY_FACTOR = 2
# create_model options that would fetch or read weights behind our back
_FORBIDDEN_TIMM_ARGS = (
    "pretrained",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "checkpoint_path",
    "cache_dir",
)
_DOTTED_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_module_counter = itertools.count()


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
    """

    model: nn.Module
    info: CheckpointInfo
    data_config: dict[str, Any] = field(default_factory=dict)
    dataset_hint: str | None = None


@dataclass
class _Source:
    """What a weights file says about itself, before any model is built."""

    weights_path: Path
    format: str
    state_dict: dict[str, torch.Tensor]
    raw_metadata: dict[str, str]  # full strings, for parsing
    metadata: dict[str, str]  # bounded copy, for the report
    meta_arch: str | None = None
    meta_arch_args: dict[str, Any] | None = None
    meta_num_classes: int | None = None
    meta_mean: list[float] | None = None
    meta_std: list[float] | None = None
    meta_input_size: list[int] | None = None
    dataset_hint: str | None = None
    folder: Path | None = None  # a timm folder, built through timm's local-dir source


@dataclass(frozen=True)
class _ArchSpec:
    kind: str  # "timm", "file" or "module"
    target: str  # timm name, .py path, or dotted module name
    class_name: str | None = None


# ---------------------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------------------


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_args: Mapping[str, Any] | str | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> LoadedCheckpoint:
    """Read a checkpoint into a bare model plus its provenance, without running its code.

    Args:
        path: a ``.safetensors`` file, a ``.pt``/``.pth``/``.bin`` file, or a timm
            folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``).
        arch: a timm model name, ``models.py:ClassName``, ``package.module:ClassName``,
            or ``models.py`` (class name from the metadata key ``arch``). Overrides the
            checkpoint's own architecture; required for ``.pt`` files.
        arch_args: keyword arguments for the constructor, as a dict or a JSON object
            string. Overrides metadata ``arch_args`` / config.json ``model_args``.
        num_classes: the number of classes; else metadata, else inferred from the
            classifier weight of a timm model.
        mean: per-channel input mean in raw input units; overrides the checkpoint's.
        std: per-channel input std; overrides the checkpoint's.

    Returns:
        The model (float32, CPU, eval mode), its :class:`CheckpointInfo`, a timm-style
        data config, and the dataset the metadata names (or None).

    Raises:
        CheckpointError: the file is missing, unreadable, unsafe, or does not fit the
            architecture; the message is one line.
        ConfigError: an option is malformed (``arch_args`` JSON, ``mean``/``std``,
            ``num_classes``, ``arch`` syntax).
    """
    try:
        return _load_checkpoint(path, arch, arch_args, num_classes, mean, std)
    except WCIAuditError:
        raise
    except Exception as exc:  # a library error we did not foresee: still one clear line
        raise CheckpointError(
            _one_line(f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}")
        ) from exc


def _load_checkpoint(
    path: str | os.PathLike[str],
    arch: str | None,
    arch_args: Mapping[str, Any] | str | None,
    num_classes: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> LoadedCheckpoint:
    user_args = _parse_user_arch_args(arch_args)
    user_nc = _check_num_classes(num_classes)
    user_mean = _check_stats(mean, "mean") if mean is not None else None
    user_std = _check_stats(std, "std") if std is not None else None
    if (user_mean is None) != (user_std is None):
        raise ConfigError("give both mean and std, or neither")
    if user_mean is not None and user_std is not None and len(user_mean) != len(user_std):
        raise ConfigError(
            f"mean has {len(user_mean)} values but std has {len(user_std)}; give one per channel"
        )
    user_arch = _parse_arch(arch, user=True) if arch is not None else None

    source = _read_source(Path(path))
    state_dict = _strip_wrapper_prefix(source.state_dict)

    if source.folder is not None and user_arch is not None and user_arch.target != source.meta_arch:
        source.meta_arch_args = None  # config.json's model_args describe its own architecture
    if source.folder is None and user_arch is not None and not _same_arch(user_arch, source):
        source.meta_arch_args = None  # the metadata's arch_args belong to another architecture
    same_as_folder = user_arch is None or (
        user_arch.kind == "timm" and user_arch.target == source.meta_arch
    )
    if source.folder is not None and same_as_folder:
        model, label, is_timm, nc = _build_timm_folder(source, user_args, user_nc)
    else:
        spec = user_arch or _arch_from_metadata(source, Path(path))
        if spec.kind == "timm":
            model, label, nc = _build_timm(spec.target, source, state_dict, user_args, user_nc)
            is_timm = True
        else:
            model, label, nc = _build_custom(spec, source, user_args, user_nc)
            is_timm = False

    _load_strict(model, state_dict, label)
    model = model.float().cpu().eval()

    data_config = _data_config(model, is_timm, source, user_mean, user_std)
    input_size = data_config["input_size"]
    info = CheckpointInfo(
        path=str(path),
        sha256=_sha256(source.weights_path),
        format=source.format,
        arch=label,
        num_params=sum(
            p.numel() for p in model.parameters()
        ),  # parameters() de-duplicates tied weights
        num_classes=nc,
        input_size=list(input_size) if input_size is not None else None,
        mean=list(data_config["mean"]) if data_config["mean"] is not None else None,
        std=list(data_config["std"]) if data_config["std"] is not None else None,
        metadata=source.metadata,
    )
    return LoadedCheckpoint(
        model=model, info=info, data_config=data_config, dataset_hint=source.dataset_hint
    )


# ---------------------------------------------------------------------------------------
# reading weight files
# ---------------------------------------------------------------------------------------


def _read_source(path: Path) -> _Source:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _read_timm_folder(path)
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    if suffix in PYTORCH_SUFFIXES:
        return _read_pytorch(path, fmt="pytorch")
    raise CheckpointError(
        f"unsupported checkpoint type {suffix or '(no extension)'!r} for {path}; supported: "
        f"{SAFETENSORS_SUFFIX}, {', '.join(PYTORCH_SUFFIXES)}, or a timm folder with "
        "config.json + model.safetensors"
    )


def _read_safetensors(path: Path, fmt: str = "safetensors") -> _Source:
    from safetensors import safe_open

    # every length, dtype and offset checked here, in Python, before the library reads
    # (the header's own key order, not the library's hash order: reports are reproducible)
    raw_meta = parse_header(path).metadata
    _check_fits_in_memory(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            state_dict = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types, plus OSError
        raise CheckpointError(
            _one_line(f"not a valid safetensors file: {path} ({type(exc).__name__}: {exc})")
        ) from None
    raw_meta = {str(k): str(v) for k, v in raw_meta.items()}
    source = _Source(
        weights_path=path,
        format=fmt,
        state_dict=state_dict,
        raw_metadata=raw_meta,
        metadata=_bounded_metadata(raw_meta),
    )
    _parse_metadata(source, where=str(path))
    return source


def _read_pytorch(path: Path, fmt: str) -> _Source:
    if path.stat().st_size == 0:
        raise CheckpointError(f"not a valid PyTorch checkpoint: {path} (the file is empty)")
    _check_fits_in_memory(path)
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
    source = _Source(
        weights_path=path,
        format=fmt,
        state_dict=state_dict,
        raw_metadata=raw_meta,
        metadata=_bounded_metadata(raw_meta),
    )
    try:
        _parse_metadata(source, where=str(path))
    except CheckpointError:
        # a training script's own bookkeeping, not metadata written for us: provenance only
        hint = source.dataset_hint
        source = _Source(path, fmt, state_dict, raw_meta, source.metadata, dataset_hint=hint)
    # A .pt file's architecture must come from the user (SPEC: nothing a checkpoint
    # names is trusted as code), so the wrapper's own "arch" entry is provenance only.
    source.meta_arch = None
    source.meta_arch_args = None
    return source


def _check_fits_in_memory(path: Path) -> None:
    """Refuse, with the sizes, a weights file that cannot be loaded here (SPEC: exit 2),
    rather than be killed by the kernel half-way through."""
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(
            f"checkpoint {path} is {_gib(size)}, over the limit of {_gib(MAX_CHECKPOINT_BYTES)}"
        )
    available = available_memory()
    needed = _LOAD_MEMORY_FACTOR * size
    if available is not None and needed > available:
        raise CheckpointError(
            f"checkpoint {path} is {_gib(size)} and loading it needs about {_gib(needed)} of "
            f"memory, but only {_gib(available)} is available; free memory or use a larger machine"
        )


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate, or None where unknown.

    The smaller of the system's available memory (``MemAvailable`` on Linux, else free
    pages from ``sysconf``) and what the cgroup (a container's limit) has left.
    """
    candidates = []
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not candidates:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            candidates.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            candidates.append(max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return min(candidates) if candidates else None


def _gib(n_bytes: int) -> str:
    if n_bytes < 2**30:
        return f"{n_bytes / 2**20:.3g} MiB"
    return f"{n_bytes / 2**30:.3g} GiB"


def _torch_load_message(path: Path, exc: Exception) -> str:
    text = str(exc)
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, flags=re.S)
    reason = detail.group(1) if detail else f"{type(exc).__name__}: {text}"
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", reason)
    if unsafe:
        return _one_line(
            f"refusing {path}: it is not a weights-only PyTorch checkpoint (its pickle calls "
            f"{unsafe.group(1)}, and wciaudit never runs code from a checkpoint); re-save it "
            "with torch.save(model.state_dict(), ...) or as .safetensors"
        )
    if isinstance(exc, EOFError) and not text:
        reason = "the file ends early"
    return _one_line(f"not a valid PyTorch checkpoint: {path} ({reason})")


def _find_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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
                    _one_line(
                        f"{path}: entry {key}[{bad!r}] is not a tensor, so {key!r} is not a state_dict"
                    )
                )
            return dict(inner), {k: v for k, v in obj.items() if k != key}
    keys = ", ".join(repr(k) for k in list(obj)[:_MAX_LISTED_KEYS])
    raise CheckpointError(
        _one_line(
            f"{path} holds no state_dict: expected tensors, or a dict with one under "
            f"'state_dict' or 'model' (found keys {keys or 'none'})"
        )
    )


def _read_timm_folder(folder: Path) -> _Source:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"folder {folder} has no config.json; a timm model folder holds config.json and "
            "model.safetensors (as timm's save_for_hf writes it)"
        )
    weights = next((folder / n for n in FOLDER_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise CheckpointError(
            f"folder {folder} has config.json but no weights; expected {' or '.join(FOLDER_WEIGHTS)}"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(_one_line(f"cannot read {config_path}: {exc}")) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} must hold a JSON object")
    if weights.suffix == SAFETENSORS_SUFFIX:
        source = _read_safetensors(weights, fmt="timm-folder")
    else:
        source = _read_pytorch(weights, fmt="timm-folder")

    raw_meta = _flatten(config)
    source.raw_metadata = raw_meta
    source.metadata = _bounded_metadata(raw_meta)
    source.folder = folder
    source.meta_arch = _str_or_none(config.get("architecture"))
    if source.meta_arch is None:
        raise CheckpointError(f"{config_path} does not name an architecture (key 'architecture')")
    model_args = config.get("model_args")
    source.meta_arch_args = dict(model_args) if isinstance(model_args, dict) else None
    source.meta_num_classes = _int_or_none(config.get("num_classes"))
    source.meta_mean = source.meta_std = source.meta_input_size = (
        None  # timm's pretrained_cfg says these
    )
    dataset = config.get("dataset")
    source.dataset_hint = dataset if isinstance(dataset, str) and dataset else None
    return source


def _parse_metadata(source: _Source, where: str) -> None:
    """Fill the typed ``meta_*`` fields from string metadata (safetensors or .pt wrapper)."""
    meta = source.raw_metadata
    source.dataset_hint = _str_or_none(meta.get("dataset"))
    source.meta_arch = _str_or_none(meta.get("arch"))
    if "arch_args" in meta:
        args = _json_value(meta["arch_args"], "arch_args", where)
        if not isinstance(args, dict):
            raise CheckpointError(f"metadata key 'arch_args' in {where} must be a JSON object")
        source.meta_arch_args = args
    if "num_classes" in meta:
        value = _json_value(meta["num_classes"], "num_classes", where)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(
                f"metadata key 'num_classes' in {where} must be a non-negative integer"
            )
        source.meta_num_classes = value
    for key in ("mean", "std"):
        if key in meta:
            setattr(source, f"meta_{key}", _metadata_stats(meta[key], key, where))
    if "input_size" in meta:
        size = _json_value(meta["input_size"], "input_size", where)
        if (
            not isinstance(size, list)
            or len(size) != 3
            or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in size)
        ):
            raise CheckpointError(
                f"metadata key 'input_size' in {where} must be a JSON list [C, H, W] of positive integers"
            )
        source.meta_input_size = size


# ---------------------------------------------------------------------------------------
# architectures
# ---------------------------------------------------------------------------------------


def _parse_arch(spec: str, *, user: bool) -> _ArchSpec:
    """``timm_name`` | ``file.py`` | ``file.py:Class`` | ``package.module:Class``."""
    import timm

    error = ConfigError if user else CheckpointError
    if not isinstance(spec, str) or not spec.strip():
        raise error("the architecture must be a timm model name or models.py:ClassName")
    spec = spec.strip()
    if timm.is_model(spec):
        return _ArchSpec("timm", spec)
    if spec.endswith(".py"):
        return _ArchSpec("file", spec)
    if ":" in spec:
        target, class_name = spec.rsplit(":", 1)
        if not _is_identifier(class_name):
            raise error(
                _one_line(
                    f"architecture {spec!r}: {class_name!r} is not a Python class name; "
                    "use models.py:ClassName or package.module:ClassName"
                )
            )
        if target.endswith(".py"):
            return _ArchSpec("file", target, class_name)
        if _DOTTED_NAME.match(target):
            return _ArchSpec("module", target, class_name)
        raise error(
            _one_line(
                f"architecture {spec!r}: {target!r} is neither a .py file nor a module name; "
                "use models.py:ClassName or package.module:ClassName"
            )
        )
    raise CheckpointError(
        _one_line(
            f"unknown architecture {spec!r}: not a timm model name (see timm.list_models()); "
            "for your own model pass --arch models.py:ClassName or package.module:ClassName"
        )
    )


def _arch_from_metadata(source: _Source, path: Path) -> _ArchSpec:
    import timm

    name = source.meta_arch
    if name is None:
        if source.format == "pytorch":
            raise CheckpointError(
                f"{path} is a PyTorch state_dict, which does not record its architecture; "
                "pass --arch with a timm model name or models.py:ClassName"
            )
        raise CheckpointError(
            f"{path} does not name its architecture (metadata key 'arch'); pass --arch with a "
            "timm model name or models.py:ClassName"
        )
    if timm.is_model(name):
        return _ArchSpec("timm", name)
    raise CheckpointError(
        _one_line(
            f"{path} names architecture {name!r}, which is not a timm model; pass "
            "--arch models.py:ClassName (the file that defines it) or a timm model name"
        )
    )


def _timm_kwargs(args: Mapping[str, Any], where: str) -> dict[str, Any]:
    kwargs = dict(args)
    bad = [k for k in _FORBIDDEN_TIMM_ARGS if k in kwargs]
    if bad:
        raise CheckpointError(
            f"arch_args from {where} may not set {', '.join(bad)}: wciaudit loads weights only "
            "from the checkpoint and never downloads"
        )
    return kwargs


def _build_timm(
    name: str,
    source: _Source,
    state_dict: Mapping[str, torch.Tensor],
    user_args: dict[str, Any] | None,
    user_nc: int | None,
) -> tuple[nn.Module, str, int | None]:
    import timm
    from timm.models import get_pretrained_cfg

    args = user_args if user_args is not None else (source.meta_arch_args or {})
    kwargs = _timm_kwargs(args, "the command line" if user_args is not None else "the checkpoint")
    args_nc = kwargs.pop("num_classes", None)
    nc = user_nc if user_nc is not None else source.meta_num_classes
    if nc is None and isinstance(args_nc, int):
        nc = args_nc
    cfg = get_pretrained_cfg(name)
    if nc is None and cfg is not None:
        nc = _head_classes(cfg.classifier, state_dict)
    if "in_chans" not in kwargs and cfg is not None:
        in_chans = _first_conv_channels(cfg.first_conv, state_dict)
        if in_chans is not None:
            kwargs["in_chans"] = in_chans
    if nc is not None:
        kwargs["num_classes"] = nc
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except Exception as exc:
        raise CheckpointError(
            _one_line(
                f"cannot build timm model {name!r} with arguments {kwargs}: {type(exc).__name__}: {exc}"
            )
        ) from None
    return model, name, getattr(model, "num_classes", nc)


def _build_timm_folder(
    source: _Source, user_args: dict[str, Any] | None, user_nc: int | None
) -> tuple[nn.Module, str, bool, int | None]:
    """Build through timm's own ``local-dir:`` source, which reads config.json."""
    import timm

    folder = source.folder
    if folder is None:  # only reached for folders; keeps type checkers informed
        raise CheckpointError("internal error: not a timm folder")
    name = source.meta_arch or ""
    if not timm.is_model(name):
        raise CheckpointError(
            _one_line(
                f"{folder / 'config.json'} names architecture {name!r}, which this "
                f"timm ({timm.__version__}) does not know"
            )
        )
    kwargs = _timm_kwargs(user_args or {}, "the command line")
    if user_nc is not None:
        kwargs["num_classes"] = user_nc
    try:
        # pretrained=False: timm reads config.json only; weights are loaded strictly below
        model = timm.create_model(f"local-dir:{folder}", pretrained=False, **kwargs)
    except Exception as exc:
        raise CheckpointError(
            _one_line(
                f"cannot build the timm model in {folder} ({name}): {type(exc).__name__}: {exc}"
            )
        ) from None
    return model, name, True, getattr(model, "num_classes", user_nc or source.meta_num_classes)


def _head_classes(classifier: Any, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Classes from the classifier weight that timm's ``pretrained_cfg`` names."""
    names = [classifier] if isinstance(classifier, str) else list(classifier or [])
    for head in names:
        weight = state_dict.get(f"{head}.weight")
        if weight is not None and weight.dim() >= 1:
            return int(weight.shape[0])
    return None


def _first_conv_channels(first_conv: Any, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Input channels from the first conv's weight ``[out, in, k, k]``, if not the default 3."""
    names = [first_conv] if isinstance(first_conv, str) else list(first_conv or [])
    for conv in names:
        weight = state_dict.get(f"{conv}.weight")
        if weight is not None and weight.dim() >= 3:
            channels = int(weight.shape[1])
            return channels if channels != 3 else None
    return None


def _build_custom(
    spec: _ArchSpec, source: _Source, user_args: dict[str, Any] | None, user_nc: int | None
) -> tuple[nn.Module, str, int | None]:
    from_metadata = spec.class_name is None
    if spec.kind == "file":
        file = Path(spec.target)
        module = _import_file(file)
        where = file.name
    else:
        module = _import_module(spec.target)
        where = spec.target
    class_name = spec.class_name or _class_name_from_metadata(source, spec.target)
    cls = _find_class(module, class_name, where, defined_here=from_metadata)
    label = f"{where}:{class_name}"

    kwargs = dict(user_args if user_args is not None else (source.meta_arch_args or {}))
    if user_nc is not None and "num_classes" not in kwargs and _accepts(cls, "num_classes"):
        kwargs["num_classes"] = user_nc
    try:
        model = cls(**kwargs)
    except Exception as exc:
        raise CheckpointError(
            _one_line(f"cannot build {label} with arguments {kwargs}: {type(exc).__name__}: {exc}")
        ) from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{label} did not build an nn.Module")
    nc = user_nc if user_nc is not None else source.meta_num_classes
    if nc is None and isinstance(kwargs.get("num_classes"), int):
        nc = kwargs["num_classes"]
    return model, label, nc


def _same_arch(spec: _ArchSpec, source: _Source) -> bool:
    """Whether the user's architecture is the one the checkpoint's metadata names."""
    if source.meta_arch is None:
        return True
    if spec.kind == "timm":
        return spec.target == source.meta_arch
    return spec.class_name is None or spec.class_name == source.meta_arch.rsplit(":", 1)[-1]


def _class_name_from_metadata(source: _Source, target: str) -> str:
    name = source.meta_arch
    if name is None:
        raise CheckpointError(
            f"the checkpoint does not name a class (metadata key 'arch'); pass --arch {target}:ClassName"
        )
    # "models.py:Net" as this module records it: only the class part is used, the
    # module part is never imported.
    candidate = name.rsplit(":", 1)[-1]
    if not _is_identifier(candidate):
        raise CheckpointError(
            _one_line(
                f"metadata key 'arch' ({name[:80]!r}) is not a Python class name; "
                f"pass --arch {target}:ClassName"
            )
        )
    return candidate


def _import_file(file: Path) -> Any:
    if file.is_dir():
        raise CheckpointError(f"architecture file {file} is a folder, not a .py file")
    if not file.is_file():
        raise CheckpointError(f"architecture file not found: {file}")
    resolved = file.resolve()
    digest = hashlib.sha256(str(resolved).encode("utf-8")).hexdigest()[:12]
    module_name = f"_wciaudit_arch_{digest}_{next(_module_counter)}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise CheckpointError(f"cannot import architecture file {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and the like look themselves up here
    # The file's own folder is importable while it runs, so `from layers import X` works.
    folder = str(resolved.parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(module_name, None)
        raise CheckpointError(
            _one_line(f"importing architecture file {file} failed: {type(exc).__name__}: {exc}")
        ) from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as exc:
        raise CheckpointError(
            _one_line(f"cannot import architecture module {name!r}: {type(exc).__name__}: {exc}")
        ) from None


def _find_class(module: Any, class_name: str, where: str, *, defined_here: bool) -> type[nn.Module]:
    cls = getattr(module, class_name, None)
    if cls is None:
        raise CheckpointError(f"{where} defines no class {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise CheckpointError(f"{where}:{class_name} is not a subclass of torch.nn.Module")
    if defined_here and cls.__module__ != module.__name__:
        # a name from metadata may only pick a class the user's file itself defines
        raise CheckpointError(
            f"{where}:{class_name} is imported into {where}, not defined there; pass --arch explicitly"
        )
    return cls


def _accepts(cls: type, name: str) -> bool:
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


# ---------------------------------------------------------------------------------------
# strict loading
# ---------------------------------------------------------------------------------------


def _strip_wrapper_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a prefix every key carries: ``module.`` (DDP) or ``_orig_mod.`` (torch.compile)."""
    for prefix in ("module.", "_orig_mod."):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], arch: str) -> None:
    """Every key and shape must match; weights must be finite; floats become float32."""
    expected = model.state_dict(keep_vars=True)
    state_dict = dict(state_dict)
    # Tied weights: a file written by safetensors' save_model keeps one name per tensor.
    aliases: dict[int, list[str]] = {}
    for key, tensor in expected.items():
        aliases.setdefault(id(tensor), []).append(key)
    for names in aliases.values():
        present = [n for n in names if n in state_dict]
        if present:
            for n in names:
                state_dict.setdefault(n, state_dict[present[0]])
    # BatchNorm fills a missing counter itself; old checkpoints lack it.
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_list_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_list_keys(unexpected)}")
        raise CheckpointError(
            _one_line(f"state_dict does not fit arch {arch!r}: {'; '.join(parts)}")
        )
    # model order, not file order (safetensors sorts its keys), so the first named is the first layer
    order = [k for k in expected if k in state_dict]
    mismatched = [k for k in order if tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if mismatched:
        k = mismatched[0]
        rest = len(mismatched) - 1
        more = f" (and {rest} more tensor{'s' if rest > 1 else ''})" if rest else ""
        raise CheckpointError(
            f"state_dict does not fit arch {arch!r}: {k} has shape {list(state_dict[k].shape)} "
            f"in the checkpoint but {list(expected[k].shape)} in the model{more}"
        )
    converted: dict[str, torch.Tensor] = {}
    for k in order:
        v = state_dict[k]
        if v.is_complex():
            raise CheckpointError(
                f"checkpoint tensor {k} is complex ({v.dtype}); expected real weights"
            )
        if expected[k].is_floating_point() and not v.is_floating_point():
            # an integer or bool tensor where a weight belongs: a cast would hide the bug
            raise CheckpointError(
                f"checkpoint tensor {k} has dtype {str(v.dtype).replace('torch.', '')} but the "
                f"model's {k} is floating point; expected float weights"
            )
        if v.is_floating_point():
            v = v.to(dtype=torch.float32)
            if not bool(torch.isfinite(v).all()):
                raise CheckpointError(
                    f"checkpoint tensor {k} contains NaN or Inf values (in float32); "
                    "refusing to audit non-finite weights"
                )
        converted[k] = v
    try:
        model.load_state_dict(converted, strict=True)
    except Exception as exc:
        raise CheckpointError(
            _one_line(f"state_dict does not fit arch {arch!r}: {type(exc).__name__}: {exc}")
        ) from None


def _list_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    rest = len(keys) - _MAX_LISTED_KEYS
    return f"{shown} (and {rest} more)" if rest > 0 else shown


# ---------------------------------------------------------------------------------------
# data config
# ---------------------------------------------------------------------------------------


def _data_config(
    model: nn.Module,
    is_timm: bool,
    source: _Source,
    user_mean: list[float] | None,
    user_std: list[float] | None,
) -> dict[str, Any]:
    """timm-style preprocessing; precedence: user > checkpoint metadata > timm's config."""
    config: dict[str, Any] = {
        "input_size": None,
        "mean": None,
        "std": None,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    if is_timm:
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
        config["input_size"] = tuple(int(x) for x in input_size)
        channels = config["input_size"][0]
        config["mean"] = _fit_channels(resolved.get("mean"), channels)
        config["std"] = _fit_channels(resolved.get("std"), channels)
    if source.meta_input_size is not None:
        config["input_size"] = tuple(source.meta_input_size)
    if source.meta_mean is not None and source.meta_std is not None:
        config["mean"], config["std"] = tuple(source.meta_mean), tuple(source.meta_std)
    if user_mean is not None and user_std is not None:
        config["mean"], config["std"] = tuple(user_mean), tuple(user_std)
    if config["mean"] is not None and config["input_size"] is not None:
        channels = config["input_size"][0]
        if len(config["mean"]) not in (1, channels) or len(config["std"]) not in (1, channels):
            error = ConfigError if user_mean is not None else CheckpointError
            raise error(
                f"mean/std have {len(config['mean'])}/{len(config['std'])} values but the model "
                f"takes {channels} input channel(s); give one value per channel"
            )
    return config


def _fit_channels(values: Any, channels: int) -> tuple[float, ...] | None:
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


# ---------------------------------------------------------------------------------------
# small parsers and helpers
# ---------------------------------------------------------------------------------------


def _parse_user_arch_args(arch_args: Mapping[str, Any] | str | None) -> dict[str, Any] | None:
    if arch_args is None:
        return None
    if isinstance(arch_args, Mapping):
        return dict(arch_args)
    if isinstance(arch_args, str):
        try:
            value = json.loads(arch_args)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                _one_line(
                    f"--arch-args is not valid JSON ({exc.msg} at character {exc.pos}); "
                    """expected an object such as '{"in_chans": 1}'"""
                )
            ) from None
        if not isinstance(value, dict):
            raise ConfigError(
                """--arch-args must be a JSON object such as '{"in_chans": 1}', """
                f"got a {type(value).__name__}"
            )
        return value
    raise ConfigError(
        f"arch_args must be a dict or a JSON object string, got {type(arch_args).__name__}"
    )


def _check_num_classes(num_classes: Any) -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def _check_stats(values: Any, name: str) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name} must be a list of numbers, one per channel, got {values!r}"
        ) from None
    if not out or not all(math.isfinite(v) for v in out):
        raise ConfigError(f"{name} must be finite numbers, one per channel, got {out}")
    if name == "std" and any(v <= 0 for v in out):
        raise ConfigError(f"std must be positive, got {out}")
    return out


def _metadata_stats(text: str, key: str, where: str) -> list[float]:
    value = _json_value(text, key, where)
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
    return [float(v) for v in value]


def _json_value(text: str, key: str, where: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"metadata key {key!r} in {where} is not valid JSON") from None


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


def _bounded_metadata(meta: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in itertools.islice(meta.items(), _MAX_METADATA_KEYS):
        key = _clip(str(key), _MAX_METADATA_KEY_CHARS)
        out[key] = _clip(str(value), _MAX_METADATA_VALUE_CHARS)
    return out


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _str_or_none(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _is_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _one_line(text: str, limit: int = 400) -> str:
    """Messages reach a terminal: one line, no escape codes, bounded length."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return _clip(" ".join(text.split()), limit)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise CheckpointError(_one_line(f"cannot read {path}: {exc}")) from None
    return digest.hexdigest()
