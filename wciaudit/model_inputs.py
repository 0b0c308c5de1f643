"""Which layer of a model refused the data, and what to tell the user about it.

When a model cannot take the data, torch's own message speaks of the layer's weight
and the batch (``expected input[2, 32, 32, 3] to have 1 channels, but got 32 channels``).
:func:`refusing_layer` runs the failing forward pass again with hooks on every
convolution and Linear layer and finds the one that raised; :func:`mismatch_words`
turns that into one line naming the data's per-example shape, what the model wants
and, where one exists, the option that fixes it. Inputs need not be images: vectors
(N, F) meet a Linear layer, sequences (N, C, L) a Conv1d, and the words follow the
layer found.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Refusal", "mismatch_words", "refusing_layer"]

_CHANNEL_COUNTS = (1, 3, 4)  # the channel counts whose channels-last layout wciaudit moves


@dataclass(frozen=True)
class Refusal:
    """The convolution or Linear layer whose forward pass raised.

    Attributes:
        name: the module's qualified name in the model, e.g. ``"conv"``.
        kind: the module's class name, e.g. ``"Conv2d"``.
        first: whether it is the first convolution or Linear layer the forward reached
            (so that it saw the data as given, up to reshapes inside the model).
        received: the per-example shape of the input it received.
        channels: a convolution's input channels, else ``None``.
        spatial: a convolution's number of spatial dimensions (1, 2 or 3), else ``None``.
        features: a Linear layer's input features, else ``None``.
    """

    name: str
    kind: str
    first: bool
    received: tuple[int, ...]
    channels: int | None = None
    spatial: int | None = None
    features: int | None = None


def refusing_layer(model: nn.Module, x: torch.Tensor) -> Refusal | None:
    """The convolution or Linear layer that raises when ``model`` runs on ``x``.

    Runs one forward pass under ``torch.no_grad()`` with forward hooks that are removed
    afterwards; the model is not changed.

    Returns:
        The layer, or ``None`` when the forward pass succeeds or fails elsewhere (a
        reshape inside the model's own ``forward``, a lazy layer, another module type).
    """
    entered: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    done: set[str] = set()
    handles = []
    for name, module in model.named_modules():
        if _kind(module) is None:
            continue

        def before(mod, args, name=name):
            shape = tuple(args[0].shape[1:]) if args and torch.is_tensor(args[0]) else ()
            entered.append((name, mod, tuple(int(s) for s in shape)))

        def after(mod, args, out, name=name):
            done.add(name)

        handles += [module.register_forward_pre_hook(before)]
        handles += [module.register_forward_hook(after)]
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # a user model may raise anything on a wrong shape
        failed = [i for i, (name, _, _) in enumerate(entered) if name not in done]
        if failed:
            name, module, received = entered[failed[-1]]
            return _refusal(name, module, received, first=failed[-1] == 0)
    finally:
        for handle in handles:
            handle.remove()
    return None


def _kind(module: nn.Module) -> str | None:
    """``"conv"`` or ``"linear"`` for the layers :func:`refusing_layer` watches."""
    if isinstance(module, nn.modules.lazy.LazyModuleMixin):
        return None
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def _refusal(name: str, module: nn.Module, received: tuple[int, ...], first: bool) -> Refusal:
    kind = type(module).__name__
    if _kind(module) == "conv":
        spatial = len(module.kernel_size)
        return Refusal(name, kind, first, received, channels=module.in_channels, spatial=spatial)
    return Refusal(name, kind, first, received, features=module.in_features)


def mismatch_words(
    shape: Sequence[int], refusal: Refusal, *, images_read_as_rgb: bool = False
) -> str:
    """One line: the data's per-example ``shape``, what the refusing layer wants, the fix.

    Args:
        shape: one example's shape as the data holds it, without the leading N.
        refusal: the layer found by :func:`refusing_layer`.
        images_read_as_rgb: the data is an ImageFolder read as RGB because the model's
            input size was unknown.

    Example:
        >>> r = Refusal("conv", "Conv2d", True, (32, 32, 3), channels=1, spatial=2)
        >>> mismatch_words((32, 32, 3), r)  # doctest: +ELLIPSIS
        "the data's examples have shape (32, 32, 3), channels-last with 3 channels, but the ..."
    """
    shape = tuple(int(s) for s in shape)
    layer = f"the model's {'first layer' if refusal.first else 'layer'} {refusal.name} "
    layer += f"({refusal.kind})"
    if not refusal.first or refusal.received != shape:
        got = _dims(refusal.received)
        wants = (
            f"{refusal.features} features"
            if refusal.features is not None
            else f"{refusal.channels} channel{'s' * (refusal.channels != 1)}"
        )
        return (
            f"{layer} takes {wants} but gets {got} from examples of shape {_dims(shape)}: the "
            "model was probably made for inputs of another size; give data of the size it "
            "was trained on (for images, --input-size C,H,W resizes them)"
        )
    if refusal.channels is not None:
        return _conv_words(shape, refusal, layer, images_read_as_rgb)
    return _linear_words(shape, refusal, layer)


def _conv_words(shape: tuple[int, ...], r: Refusal, layer: str, read_as_rgb: bool) -> str:
    c, d = r.channels, r.spatial
    plural = "s" * (c != 1)
    axes = ", ".join(("L",) if d == 1 else ("H", "W") if d == 2 else ("D", "H", "W"))
    wants = f"takes {c} channel{plural}, (N, {c}, {axes})"
    if len(shape) != d + 1:
        extra = ", with no channel axis" if len(shape) == d else ""
        return (
            f"the data's examples have shape {_dims(shape)}{extra}, but {layer} {wants}: give "
            f"data of shape (N, {c}, {axes})"
        )
    if read_as_rgb and shape[0] == 3 and c in (1, 3):
        size = ",".join(str(s) for s in (c, *shape[1:]))
        return (
            f"the images were read as RGB, {_dims(shape)}, because the model's input size is "
            f"unknown, but {layer} {wants}: pass --input-size {size}"
        )
    if shape[-1] == c and shape[0] != c and d == 2:
        size = ",".join(str(s) for s in (c, *shape[:-1]))
        fix = (
            f"pass --input-size {size} to move its channel axis first"
            if c in _CHANNEL_COUNTS
            else f"store it channels-first, (N, {c}, {axes})"
        )
        return f"the data's examples look channels-last, shape {_dims(shape)}, and {layer} {wants}: {fix}"
    last_axis = shape[-1] in _CHANNEL_COUNTS and shape[0] not in _CHANNEL_COUNTS and d == 2
    have = shape[-1] if last_axis else shape[0]
    layout = "channels-last" if last_axis else "channels-first"
    return (
        f"the data's examples have shape {_dims(shape)}, {layout} with {have} channel"
        f"{'s' * (have != 1)}, but {layer} {wants}: give {c}-channel data, or audit a model "
        f"that takes {have}"
    )


def _linear_words(shape: tuple[int, ...], r: Refusal, layer: str) -> str:
    f = r.features
    values = math.prod(shape)
    if values == f and len(shape) > 1:
        return (
            f"the data's examples have shape {_dims(shape)} ({values} values) and {layer} takes "
            f"{f} features, but the model does not flatten its input: give data of shape "
            f"(N, {f})"
        )
    return (
        f"the data's examples have shape {_dims(shape)} ({shape[-1] if shape else 0} in the last "
        f"axis, {values} values), but {layer} takes {f} features"
    )


def _dims(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"
