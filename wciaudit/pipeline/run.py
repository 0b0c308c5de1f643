"""What every stage of one scan shares: the settings, where it runs, the batch size in
use, the notes it writes and the callbacks it reports through (:class:`ScanRun`)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ScanConfig
from ..distributed import Shard
from ..model import resolve_device
from ..retry import run_with_batch_retry

__all__ = ["BatchSize", "ProgressCallback", "ScanRun"]

#: progress(stage, advance, total): stage is "attack-train", "attack-test",
#: "attack-spread" or "curvature"; total is None where it is not known in advance
#: (Hutchinson probes).
ProgressCallback = Callable[[str, int, "int | None"], None]


class BatchSize:
    """The batch size of the batched stages, halved for good after an out-of-memory error.

    Each retry is written to ``notes`` (SPEC: every setting is part of the report), and
    the size finally used goes to ``config["batch_size_used"]``.
    """

    def __init__(self, size: int, notes: list[str]) -> None:
        self.size = size
        self._notes = notes

    def run(self, fn: Callable[[int], Any], *, retry: bool = True) -> Any:
        """``fn(batch_size)``; on out of memory, again at half the size (unless ``retry``
        is False: under torchrun one process retrying would desynchronise the others)."""
        if not retry:
            return fn(self.size)
        result, self.size = run_with_batch_retry(fn, self.size, on_retry=self._note)
        return result

    def _note(self, failed: int, smaller: int, message: str) -> None:
        self._notes.append(
            f"out of memory at batch size {failed}; retried with {smaller} ({message})"
        )


def _untimed(_name: str) -> AbstractContextManager[None]:
    return nullcontext()


@dataclass
class ScanRun:
    """The settings and surroundings every stage of one scan reads.

    Attributes:
        config: the scan's settings, its threat model resolved.
        device, dtype: where and in which precision the model runs.
        shard: this process's place under torchrun (a single process by default).
        batches: the batch size in use, halved on out of memory.
        notes: the notes the stages write, in the order they write them; the result
            gets a copy (:func:`wciaudit.pipeline.assemble.assemble`).
        progress: ``progress(stage, advance, total)`` or None.
        part: times a part of a stage (``with run.part("traces"): ...``).
    """

    config: ScanConfig
    device: torch.device
    dtype: torch.dtype
    shard: Shard
    batches: BatchSize
    notes: list[str] = field(default_factory=list)
    progress: ProgressCallback | None = None
    part: Callable[[str], AbstractContextManager[None]] = _untimed

    @classmethod
    def create(
        cls, config: ScanConfig, shard: Shard, progress: ProgressCallback | None = None
    ) -> ScanRun:
        on_gpu = shard.active and shard.device.type == "cuda"
        device = shard.device if on_gpu else resolve_device(config.device)
        dtype = torch.float64 if config.dtype == "float64" else torch.float32
        notes: list[str] = []
        return cls(
            config, device, dtype, shard, BatchSize(config.batch_size, notes), notes, progress
        )

    def ticker(self, stage: str, total: int | None) -> Callable[..., None] | None:
        """``progress(stage, k, total)`` as the one- or two-argument callback a stage takes."""
        if self.progress is None:
            return None
        report = self.progress

        def tick(*args: Any) -> None:
            report(stage, args[-1], total)

        return tick
