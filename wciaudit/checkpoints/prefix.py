"""The attribute prefix that makes a training wrapper's keys fit the architecture.

A LightningModule that holds the network as ``self.model`` saves ``model.net.0.weight``
where the network alone has ``net.0.weight``, beside the module's other tensors (a loss
weight, a second network). When the keys do not fit the architecture as they are, the
shortest dotted prefix whose keys fit it exactly (every key, as the strict loader counts
them) is stripped, and the result says which prefix and which other entries were left
out. Entries outside the prefix are left out only for a Lightning checkpoint, whose
state dict is a whole LightningModule's; elsewhere every key must carry the prefix.
(DDP's ``module.`` and torch.compile's ``_orig_mod.``, carried by every key, are
stripped before the model is built: :func:`~.strict.strip_wrapper_prefix`.)
"""

from __future__ import annotations

import torch
from torch import nn

from ._text import list_keys
from .strict import key_mismatch

StateDict = dict[str, torch.Tensor]
#: dotted prefixes tried, at most this deep (``model.`` .. ``a.b.c.``)
MAX_DEPTH = 3


def fit_attribute_prefix(
    model: nn.Module, state_dict: StateDict, *, others_allowed: bool
) -> tuple[StateDict, str | None]:
    """The state dict with the fitting prefix stripped, and a note saying so.

    Args:
        model: the built architecture.
        state_dict: the checkpoint's tensors.
        others_allowed: entries outside the prefix may be left out (Lightning).

    Returns:
        ``(state_dict, note)``: unchanged with None when the keys fit as they are or no
        prefix makes them fit (the strict loader then names the mismatch).
    """
    missing, unexpected = key_mismatch(model, state_dict)
    if not missing and not unexpected:
        return state_dict, None
    for prefix in _candidates(state_dict):
        inner = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        left_out = [k for k in state_dict if not k.startswith(prefix)]
        if left_out and not others_allowed:
            continue
        missing, unexpected = key_mismatch(model, inner)
        if not missing and not unexpected:
            note = f"state_dict prefix {prefix!r} stripped: the keys under it fit the architecture"
            if left_out:
                n = len(left_out)
                note += (
                    f"; {n} other entr{'y' if n == 1 else 'ies'} of the checkpoint left out "
                    f"({list_keys(left_out)})"
                )
            return inner, note
    return state_dict, None


def _candidates(state_dict: StateDict) -> list[str]:
    """Dotted key prefixes, shortest first, in file order."""
    seen: dict[str, None] = {}
    for depth in range(1, MAX_DEPTH + 1):
        for key in state_dict:
            parts = key.split(".")
            if len(parts) > depth:
                seen.setdefault(".".join(parts[:depth]) + ".", None)
    return list(seen)
