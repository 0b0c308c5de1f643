"""How many examples one chunk of per-example gradients or Jacobians may hold.

The budget (``memory_bytes``, :data:`wciaudit.config.DEFAULT_MEMORY_BYTES` by default) is a ceiling; on a CUDA device the
free memory is asked for (``torch.cuda.mem_get_info``) and at most half of it is used,
since the model, its activations and the allocator's cache need the rest. Per example
a chunk holds its rows (C x numel for Jacobians, numel for gradients), a temporary of
the same size while they are reduced (the square), and the backward temporaries of
the rows: one activation-sized gradient per row, counted from the outputs of the
model's modules on one example.
"""

from __future__ import annotations

import torch

from .objective import Objective

#: share of a CUDA device's free memory one chunk may take
FREE_SHARE = 0.5


def memory_budget(device: torch.device, memory_bytes: int) -> int:
    """``memory_bytes``, lowered on CUDA to :data:`FREE_SHARE` of the free memory."""
    if device.type != "cuda":
        return memory_bytes
    free, _total = torch.cuda.mem_get_info(device)
    return budget_from(memory_bytes, free)


def budget_from(memory_bytes: int, free: int) -> int:
    """The budget given the device's free bytes (a pure function, for the tests).

    Example:
        >>> budget_from(2**29, 8 * 2**30) == 2**29, budget_from(512, 600)
        (True, 300)
    """
    return max(1, min(memory_bytes, int(free * FREE_SHARE)))


def activation_numel(objective: Objective) -> int:
    """Numbers the model's modules output for one example (a forward pass of one)."""
    total = 0

    def count(_module: torch.nn.Module, _inputs: tuple, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    leaves = [m for m in objective.model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            x = objective.x[:1].to(objective.device, objective.dtype)
            objective.logits(objective.weights(requires_grad=False), x)
    finally:
        for h in handles:
            h.remove()
    return total


def chunk_examples(objective: Objective, rows: int, numel: int, memory_bytes: int) -> int:
    """Examples per chunk: ``rows`` rows of ``numel`` numbers per example (C for
    Jacobians, 1 for gradients), twice over (the rows and their square), plus one
    activation-sized backward temporary per row, within :func:`memory_budget`."""
    itemsize = torch.empty((), dtype=objective.dtype).element_size()
    per_example = rows * (2 * numel + activation_numel(objective)) * itemsize
    budget = memory_budget(objective.device, memory_bytes)
    return max(1, budget // max(per_example, 1))
