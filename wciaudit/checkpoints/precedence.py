"""One rule for every value a checkpoint and the user can both state.

Precedence: the user's flag > the checkpoint's metadata > the model library's config
(timm's, or a transformers folder's preprocessor config) > the default.
It decides mean, std, input size, the number of classes and the threat model (eps, norm),
and each value carries the name of its source into the result.

Example:
    >>> resolve("eps", None, 0.1, None, 8 / 255)
    Resolved(name='eps', value=0.1, source='checkpoint metadata')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FLAG = "flag"
METADATA = "checkpoint metadata"
TIMM_CONFIG = "timm config"
TRANSFORMERS_CONFIG = "transformers preprocessor config"
DEFAULT = "default"
#: the source of mean/std for a torchvision model given none: no normalisation at all
NONE_TORCHVISION = "none, torchvision model"


@dataclass(frozen=True)
class Resolved:
    """A value and where it came from (:data:`FLAG`, :data:`METADATA`, :data:`TIMM_CONFIG`
    or :data:`DEFAULT`)."""

    name: str
    value: Any
    source: str


def resolve(
    name: str,
    flag: Any,
    metadata: Any,
    timm_config: Any,
    default: Any,
    *,
    config_source: str = TIMM_CONFIG,
) -> Resolved:
    """The first of ``flag``, ``metadata``, ``timm_config`` that is not None, else ``default``.

    Args:
        name: what is resolved (kept in the answer, for messages and the result).
        flag: the user's value (command-line flag or API argument), or None.
        metadata: what the checkpoint's own metadata says, or None.
        timm_config: what the model library's config says (timm's, or a transformers
            folder's ``preprocessor_config.json``), or None.
        default: the value when none of them says anything (may be None).
        config_source: the source named for ``timm_config`` (:data:`TIMM_CONFIG` or
            :data:`TRANSFORMERS_CONFIG`).

    Returns:
        The chosen value and its source; a None default is still reported as "default".
    """
    for value, source in ((flag, FLAG), (metadata, METADATA), (timm_config, config_source)):
        if value is not None:
            return Resolved(name, value, source)
    return Resolved(name, default, DEFAULT)
