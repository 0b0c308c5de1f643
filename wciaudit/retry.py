"""Out-of-memory retries: run a batched computation again with half the batch size.

A scan sized for one GPU may not fit another. Rather than dying, the batched stages
(attack, evaluation, curvature) are re-run with half the batch size after an
out-of-memory error, down to ``min_batch``; the caller records each retry so the report
says which batch size was actually used.

Example:
    >>> calls = []
    >>> def work(batch_size):
    ...     calls.append(batch_size)
    ...     if batch_size > 32:
    ...         raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    ...     return "done"
    >>> run_with_batch_retry(work, 128)
    ('done', 32)
    >>> calls
    [128, 64, 32]
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TypeVar

import torch

from .errors import ConfigError

__all__ = ["is_out_of_memory", "run_with_batch_retry"]

T = TypeVar("T")

#: phrases of the allocators' out-of-memory messages (CUDA, ROCm/HIP, MPS, CPU)
_OOM_PHRASES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator's out-of-memory error (GPU or CPU), not a bug.

    ``torch.cuda.OutOfMemoryError`` and ``MemoryError`` always are; a ``RuntimeError``
    is when its message says so (older torch, cuDNN/cuBLAS, MPS and the CPU allocator
    raise plain ``RuntimeError``s).
    """
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(phrase in text for phrase in _OOM_PHRASES)
    return False


def run_with_batch_retry(
    fn: Callable[[int], T],
    batch_size: int,
    *,
    min_batch: int = 1,
    on_retry: Callable[[int, int, str], None] | None = None,
) -> tuple[T, int]:
    """Call ``fn(batch_size)``; after an out-of-memory error, again with half of it.

    Args:
        fn: the batched computation; called afresh on each try (nothing of a failed
            try is kept).
        batch_size: the first batch size to try (>= 1).
        min_batch: the smallest batch size tried; an out-of-memory error there is final.
        on_retry: called as ``on_retry(failed, next_batch, message)`` before each retry,
            ``message`` being the first line of the error.

    Returns:
        ``(fn's result, the batch size that succeeded)``.

    Raises:
        ConfigError: out of memory even at ``min_batch`` (one line, names the sizes).
        Exception: any error of ``fn`` that is not out-of-memory, unchanged.
    """
    if batch_size < 1 or min_batch < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_size} and min_batch {min_batch}")
    size = batch_size
    while True:
        try:
            return fn(size), size
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            failed_with = exc
        # the failed try's tensors are referenced from the traceback: drop them first
        detail = _first_line(failed_with)
        del failed_with
        _release_memory()
        if size <= min_batch:
            raise ConfigError(
                f"out of memory even at batch size {size} ({detail}); free memory on the "
                "device, lower --hessian-samples, or use --device cpu"
            )
        smaller = max(min_batch, size // 2)
        if on_retry is not None:
            on_retry(size, smaller, detail)
        size = smaller


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
