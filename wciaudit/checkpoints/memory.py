"""Whether a weights file fits in memory, asked before it is read (SPEC: exit 2)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import CheckpointError
from ._text import gib

#: refuse weight files larger than this, whatever the memory (bytes)
MAX_CHECKPOINT_BYTES = 64 * 2**30
# Loading holds the file's tensors and the model's own copy at once.
_LOAD_MEMORY_FACTOR = 2


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate, or None where unknown.

    The smaller of the system's available memory (``MemAvailable`` on Linux, else free
    pages from ``sysconf``) and what the cgroup (a container's limit) has left.
    """
    candidates = []
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not candidates:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            candidates.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            candidates.append(max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return min(candidates) if candidates else None


def check_fits_in_memory(path: Path) -> None:
    """Refuse, with the sizes, a weights file that cannot be loaded here, rather than be
    killed by the kernel half-way through."""
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(
            f"checkpoint {path} is {gib(size)}, over the limit of {gib(MAX_CHECKPOINT_BYTES)}"
        )
    available = available_memory()
    needed = _LOAD_MEMORY_FACTOR * size
    if available is not None and needed > available:
        raise CheckpointError(
            f"checkpoint {path} is {gib(size)} and loading it needs about {gib(needed)} of "
            f"memory, but only {gib(available)} is available; free memory or use a larger machine"
        )
