"""torchvision models by name: ``--arch torchvision:resnet18`` -> an untrained model.

Any builder that ``torchvision.models`` registers (``torchvision.models.list_models()``)
is called through ``get_model_builder`` with ``weights=None``: no weights are downloaded,
they come from the checkpoint and are loaded strictly like every other format. A
torchvision model applies no normalisation of its own, so none is assumed unless
``--mean/--std`` or the checkpoint's metadata give it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import CheckpointError
from ._text import one_line

PREFIX = "torchvision:"
# builder arguments that would fetch weights behind our back
_FORBIDDEN_ARGS = ("weights", "weights_backbone", "progress")


def is_torchvision_name(spec: str) -> bool:
    """Whether ``spec`` has the form ``torchvision:<builder>``."""
    return spec.startswith(PREFIX)


def check_name(spec: str) -> str:
    """The builder name of ``torchvision:<name>``, if torchvision registers it.

    Raises:
        CheckpointError: torchvision is missing or has no such builder.
    """
    name = spec[len(PREFIX) :].strip()
    try:
        from torchvision import models
    except ImportError:
        raise CheckpointError(
            f"architecture {spec!r} needs torchvision: pip install torchvision"
        ) from None
    known = models.list_models()
    if name not in known:
        close = [k for k in known if name and (name in k or k in name)][:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise CheckpointError(
            one_line(
                f"torchvision has no model builder {name!r}{hint}; "
                "see torchvision.models.list_models()"
            )
        )
    return name


def build_torchvision(name: str, args: Mapping[str, Any], where: str) -> nn.Module:
    """``torchvision.models.get_model_builder(name)(weights=None, **args)``.

    Args:
        name: a registered builder (:func:`check_name`).
        args: constructor keyword arguments (``num_classes``, ``width_mult``, ...).
        where: where ``args`` came from, for messages.

    Raises:
        CheckpointError: ``args`` ask for weights, or the builder refuses them.
    """
    from torchvision import models

    bad = [k for k in _FORBIDDEN_ARGS if k in args]
    if bad:
        raise CheckpointError(
            f"arch_args from {where} may not set {', '.join(bad)}: wciaudit loads weights only "
            "from the checkpoint and never downloads"
        )
    try:
        model = models.get_model_builder(name)(weights=None, **args)
    except Exception as exc:
        raise CheckpointError(
            one_line(
                f"cannot build torchvision model {name!r} with arguments {dict(args)}: "
                f"{type(exc).__name__}: {exc}"
            )
        ) from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"torchvision builder {name!r} did not build an nn.Module")
    return model
