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
from datetime import timedelta

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


#: how long a collective waits for the other processes before it raises (seconds): the
#: processes do equal work between collectives, so a long wait means a peer has died
DEFAULT_TIMEOUT_S = 900


def choose_device(spec: str, local_rank: int, cuda_count: int) -> torch.device:
    """The device of one torchrun process, from ``--device`` and what it can see.

    A pure function of its readings (``LOCAL_RANK`` and ``torch.cuda.device_count()``,
    which counts the devices ``CUDA_VISIBLE_DEVICES`` leaves this process):

    - ``cpu``: the CPU (gloo), even on a host with GPUs;
    - ``auto``: as ``cuda`` where a CUDA device is visible, else the CPU;
    - ``cuda``: ``cuda:LOCAL_RANK`` where every process sees every device of the host;
      ``cuda:0`` where the process sees one device (a scheduler that gives each task its
      own ``CUDA_VISIBLE_DEVICES``);
    - ``cuda:N``: device N of those this process sees, as given (with several processes
      per host each must see a different device there, else NCCL reports a duplicate GPU).

    Raises:
        ConfigError: CUDA asked for and none visible, ``cuda:N`` beyond the visible
            devices, or more processes on the host than visible devices.

    Example:
        >>> choose_device("cuda", local_rank=3, cuda_count=1)
        device(type='cuda', index=0)
        >>> choose_device("auto", local_rank=1, cuda_count=0)
        device(type='cpu')
    """
    if spec == "cpu" or (spec == "auto" and cuda_count == 0):
        return torch.device("cpu")
    if spec != "auto" and not spec.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if cuda_count == 0:
        raise ConfigError(f"device {spec!r} asked for, but this process sees no CUDA device")
    asked = torch.device("cuda" if spec == "auto" else spec)
    if asked.index is not None:
        if asked.index >= cuda_count:
            raise ConfigError(
                f"device {spec!r} does not exist; this process sees {cuda_count} CUDA device(s)"
            )
        return asked
    if cuda_count == 1:
        return torch.device("cuda", 0)
    if local_rank >= cuda_count:
        raise ConfigError(
            f"LOCAL_RANK {local_rank} but this process sees only {cuda_count} CUDA devices: "
            "start at most one process per device, or use --device cpu"
        )
    return torch.device("cuda", local_rank)


def shard_from_env(
    device: str = "auto", backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Shard:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_*).

    Args:
        device: the scan's ``--device``; the process's device is :func:`choose_device`'s.
        backend: default ``nccl`` on a CUDA device, ``gloo`` on the CPU.
        timeout_s: the longest a collective waits for the other processes.

    A single process (no WORLD_SIZE, or 1) gives ``Shard()`` without touching
    torch.distributed.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard()
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed support")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    chosen = choose_device(device, local, count)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    backend = backend or ("nccl" if chosen.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return Shard(rank=dist.get_rank(), world=dist.get_world_size(), device=chosen)


def leave(shard: Shard, failed: bool = False) -> None:
    """Tear the process group down at the end of a distributed command.

    After a failure this process leaves at once: its peers may be waiting in a
    collective that a barrier here would meet out of step (a hang until the timeout);
    exiting lets torchrun stop them.
    """
    if not (shard.active and dist.is_initialized()):
        return
    if failed:
        return
    # leave together: a rank that exits while another still talks to the store
    # (hosted by rank 0) can abort the other at shutdown
    dist.barrier()
    dist.destroy_process_group()
