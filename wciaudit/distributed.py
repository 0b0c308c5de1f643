"""Data-parallel scans under ``torchrun`` with torch.distributed (NCCL on GPUs, gloo on CPU).

Each process takes a contiguous shard of every split: it attacks its shard (random
starts are seeded by the global example index, so the examples are the ones a single
process would make), evaluates it, and the per-example losses and correctness are
gathered in index order. The Hessian subset is chosen globally and sharded again;
every Hessian-vector product sum and exact-route sum is all-reduced, so all processes
see the same probe values and take the same stop decisions. Only rank 0 writes.

Example (two CPU processes):

    torchrun --nproc-per-node 2 -m wciaudit scan model.safetensors --data sample --distributed
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigError


@dataclass(frozen=True)
class Shard:
    """This process's place in the group; ``Shard()`` is the single-process case."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def bounds(self, n: int) -> tuple[int, int]:
        """[start, stop) of this rank's contiguous share of n items (sizes differ by <= 1)."""
        return self.rank * n // self.world, (self.rank + 1) * n // self.world

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over processes; identity in a single process. Returns a CPU tensor."""
        if not self.active:
            return t
        buf = t.detach().to(self.device).contiguous()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.cpu()

    def gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's tensor along dim 0, in rank order (sizes may differ)."""
        if not self.active:
            return t
        sizes = torch.tensor([t.shape[0]], device=self.device)
        all_sizes = [torch.zeros_like(sizes) for _ in range(self.world)]
        dist.all_gather(all_sizes, sizes)
        counts = [int(s.item()) for s in all_sizes]
        biggest = max(counts)
        pad = torch.zeros((biggest - t.shape[0], *t.shape[1:]), dtype=t.dtype)
        buf = torch.cat([t.detach().cpu(), pad]).to(self.device).contiguous()
        parts = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(parts, buf)
        return torch.cat([p[:c].cpu() for p, c in zip(parts, counts, strict=True)])

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def shard_from_env(backend: str | None = None) -> Shard:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_*).

    Backend: ``nccl`` when CUDA is available, else ``gloo``. A single process (no
    WORLD_SIZE, or 1) gives ``Shard()`` without touching torch.distributed.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard()
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed support")
    use_cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Shard(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def leave(shard: Shard) -> None:
    """Tear the process group down at the end of a distributed command."""
    if shard.active and dist.is_initialized():
        # leave together: a rank that exits while another still talks to the store
        # (hosted by rank 0) can abort the other at shutdown
        dist.barrier()
        dist.destroy_process_group()
