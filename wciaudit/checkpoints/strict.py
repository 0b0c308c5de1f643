"""Strict loading: every key, every shape, finite float weights (SPEC: the model under audit)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError
from ._text import list_keys, one_line

StateDict = dict[str, torch.Tensor]


def strip_wrapper_prefix(state_dict: StateDict) -> StateDict:
    """Drop a prefix every key carries: ``module.`` (DDP) or ``_orig_mod.`` (torch.compile)."""
    for prefix in ("module.", "_orig_mod."):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def load_strict(model: nn.Module, state_dict: StateDict, arch: str) -> None:
    """Every key and shape must match; weights must be finite; floats become float32.

    Tied weights saved once (safetensors' ``save_model``) fill their aliases; a missing
    BatchNorm ``num_batches_tracked`` is allowed (old checkpoints lack it).
    """
    expected = model.state_dict(keep_vars=True)
    state_dict = _with_aliases(expected, state_dict)
    missing, unexpected = _mismatch(expected, state_dict)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {list_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {list_keys(unexpected)}")
        raise CheckpointError(
            one_line(f"state_dict does not fit arch {arch!r}: {'; '.join(parts)}")
        )
    # model order, not file order (safetensors sorts its keys): the first named is the first layer
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
    converted = {k: _checked(k, state_dict[k], expected[k]) for k in order}
    try:
        model.load_state_dict(converted, strict=True)
    except Exception as exc:
        raise CheckpointError(
            one_line(f"state_dict does not fit arch {arch!r}: {type(exc).__name__}: {exc}")
        ) from None


def key_mismatch(model: nn.Module, state_dict: StateDict) -> tuple[list[str], list[str]]:
    """The model's keys the state dict lacks and the state dict's keys the model lacks,
    as :func:`load_strict` counts them (tied aliases filled, ``num_batches_tracked`` optional)."""
    expected = model.state_dict(keep_vars=True)
    return _mismatch(expected, _with_aliases(expected, state_dict))


def _mismatch(expected: StateDict, state_dict: StateDict) -> tuple[list[str], list[str]]:
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    return missing, unexpected


def _with_aliases(expected: StateDict, state_dict: StateDict) -> StateDict:
    """Tied weights: a file written by safetensors' save_model keeps one name per tensor."""
    state_dict = dict(state_dict)
    aliases: dict[int, list[str]] = {}
    for key, tensor in expected.items():
        aliases.setdefault(id(tensor), []).append(key)
    for names in aliases.values():
        present = [n for n in names if n in state_dict]
        if present:
            for n in names:
                state_dict.setdefault(n, state_dict[present[0]])
    return state_dict


def _checked(key: str, value: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    if value.is_complex():
        raise CheckpointError(
            f"checkpoint tensor {key} is complex ({value.dtype}); expected real weights"
        )
    if expected.is_floating_point() and not value.is_floating_point():
        # an integer or bool tensor where a weight belongs: a cast would hide the bug
        raise CheckpointError(
            f"checkpoint tensor {key} has dtype {str(value.dtype).replace('torch.', '')} but the "
            f"model's {key} is floating point; expected float weights"
        )
    if value.is_floating_point():
        value = value.to(dtype=torch.float32)
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"checkpoint tensor {key} contains NaN or Inf values (in float32); "
                "refusing to audit non-finite weights"
            )
    return value
