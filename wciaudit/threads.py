"""The CPU thread policy of the command line: how many threads torch gets, and whether
OpenMP's idle threads spin, chosen from the machine when a command starts.

torch's default is one thread per core of the machine, and OpenMP's threads spin while
they wait for work. On a machine that runs other jobs (a CI runner, a laptop, a shared
server) both collapse: a parallel region waits for a thread that is descheduled, and the
spinning threads take the cores the working ones need. Measured on 2 cores with one
other torch job (a 2-thread matmul loop), the README's sample scan took 42-47 s with
torch's default and 15 s with one thread (``benchmarks/busy.py`` measures it again).

The policy, from readings of the machine (:func:`read_cpus`):

1. the CPUs this process may use: the smallest of the machine's cores, the CPU affinity
   (``os.sched_getaffinity``, what ``taskset`` and ``docker --cpuset-cpus`` set) and the
   cgroup CPU quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us / cpu.cfs_period_us``
   in v1, what ``docker --cpus`` and Kubernetes CPU limits set), rounded down, at least 1;
2. the load of other processes: the larger of the 1-minute load average less this
   process's own share of it, and the tasks runnable right now (the median of a few
   readings) less this one. The load average lags a minute behind a job that just
   started; the count of runnable tasks does not. The larger one is taken because the
   costs are lopsided: too many threads on a busy machine cost 3-5x, too few on an idle
   one about 1.15x;
3. that load is taken to fall on this process's CPUs in proportion to their share of
   the machine; the threads are the CPUs left free, rounded, between 1 and the usable CPUs.
   Under torchrun (``LOCAL_WORLD_SIZE`` processes on the machine) each process gets its
   part;
4. OpenMP's wait policy is left as the user set it (or OpenMP's default). Measured with
   ``benchmarks/busy.py`` on 2 cores: ``OMP_WAIT_POLICY=PASSIVE`` with 2 threads took
   64 s on an idle machine against 17 s with OpenMP's default wait; it helps 2 threads
   beside another job (36 s against 75 s), but there step 3 gives one thread, which
   took 24 s. So the thread count, not the wait policy, is what holds on a busy machine.

``--threads N`` or ``OMP_NUM_THREADS`` set by the user override steps 1-3. The Python API
(:func:`wciaudit.scan`) changes no global thread setting unless asked: with
``ScanConfig.threads`` left at None it runs on torch's setting as it finds it; with a
number it sets torch's threads for the scan and puts the old value back afterwards.

Example:
    >>> r = CpuReadings(cores=8, affinity=8, quota=None, load=4.0, running=(5, 5, 4))
    >>> choose_threads(r).threads
    4
    >>> choose_threads(r, requested=2).reason
    '--threads 2'
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "CpuReadings",
    "ThreadChoice",
    "choose_threads",
    "cgroup_quota",
    "parse_cpu_max",
    "parse_cfs_quota",
    "own_load",
    "read_cpus",
    "prepare_threads",
    "torch_threads",
    "api_thread_policy",
]

WAIT_POLICY = "OMP_WAIT_POLICY"
#: how many times the count of runnable tasks is read (its median is used)
_RUNNING_READS = 5


@dataclass(frozen=True)
class CpuReadings:
    """What the policy looks at; every field may be unknown (None) but ``cores``.

    Attributes:
        cores: the machine's logical CPUs (``os.cpu_count()``).
        affinity: the CPUs this process may run on.
        quota: the cgroup CPU quota in CPUs (1.5 = 150 ms per 100 ms), None for none.
        load: the 1-minute load average (the whole machine's, also in a container).
        running: readings of the tasks runnable now, this process's reading thread included.
        own: this process's own share of ``load`` (see :func:`own_load`).
        processes: the processes of this scan on the machine (torchrun's LOCAL_WORLD_SIZE).
        omp_num_threads: ``OMP_NUM_THREADS`` as set in the environment, or None.
    """

    cores: int
    affinity: int | None = None
    quota: float | None = None
    load: float | None = None
    running: tuple[int, ...] = ()
    own: float = 0.0
    processes: int = 1
    omp_num_threads: str | None = None


@dataclass(frozen=True)
class ThreadChoice:
    """The threads chosen and why (one line); written to the JSON ``config.thread_policy``."""

    threads: int
    reason: str
    wait_policy: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"threads": self.threads, "reason": self.reason, "omp_wait_policy": self.wait_policy}


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 ``cpu.max`` (``"max 100000"`` or ``"150000 100000"``) in CPUs; None: no quota.

    Example:
        >>> parse_cpu_max("150000 100000"), parse_cpu_max("max 100000")
        (1.5, None)
    """
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    period = float(parts[1]) if len(parts) > 1 else 100_000.0
    return _ratio(float(parts[0]), period)


def parse_cfs_quota(quota: str, period: str) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` in CPUs; None: no quota (-1)."""
    return _ratio(float(quota.strip()), float(period.strip()))


def _ratio(quota: float, period: float) -> float | None:
    return quota / period if quota > 0 and period > 0 else None


def own_load(cpu_s: float, elapsed_s: float) -> float:
    """This process's share of the 1-minute load average: its mean parallelism so far
    (CPU seconds over wall seconds) weighted as the average weights the last minute,
    1 - exp(-elapsed / 60)."""
    if elapsed_s <= 0:
        return 0.0
    return (cpu_s / elapsed_s) * (1.0 - math.exp(-elapsed_s / 60.0))


def usable_cpus(r: CpuReadings) -> tuple[int, str]:
    """The CPUs this process may use (step 1), and which limit decided it."""
    limits = [(max(r.cores, 1), f"{r.cores} cores")]
    if r.affinity is not None:
        limits.append((r.affinity, f"affinity {r.affinity} CPUs"))
    if r.quota is not None:
        limits.append((max(int(r.quota), 1), f"cgroup quota {r.quota:g} CPUs"))
    count, why = min(limits, key=lambda item: item[0])
    return max(count, 1), why


def other_load(r: CpuReadings) -> float:
    """The load of other processes (step 2), in CPUs, at least 0."""
    seen = [0.0]
    if r.load is not None:
        seen.append(r.load - r.own)
    if r.running:
        seen.append(statistics.median(r.running) - 1)
    return max(seen)


def choose_threads(r: CpuReadings, requested: int | None = None) -> ThreadChoice:
    """The thread count (steps 1-3 of the module docstring) and the reason, in one line.

    Raises:
        ConfigError: ``requested`` below 1.
    """
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ConfigError(f"--threads must be an integer >= 1, got {requested!r}")
        return ThreadChoice(requested, f"--threads {requested}")
    if r.omp_num_threads is not None:
        try:
            given = int(r.omp_num_threads)
        except ValueError:
            given = 0
        if given >= 1:
            return ThreadChoice(given, f"OMP_NUM_THREADS={given} in the environment")
    usable, why = usable_cpus(r)
    mine = r.affinity or r.cores
    other = other_load(r)
    free = mine - other * mine / max(r.cores, 1)
    processes = max(r.processes, 1)
    threads = min(max(round(free / processes), 1), max(usable // processes, 1))
    share = f", {processes} processes" if processes > 1 else ""
    return ThreadChoice(
        threads,
        f"{usable} usable CPUs ({why}), other load {other:.1f}{share}",
    )


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup, v2 or v1, in CPUs; None: none or unreadable."""
    try:
        return parse_cpu_max((root / "cpu.max").read_text())
    except (OSError, ValueError, IndexError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota = (folder / "cpu.cfs_quota_us").read_text()
            return parse_cfs_quota(quota, (folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
    return None


def read_cpus(environ: MutableMapping[str, str] | None = None) -> CpuReadings:
    """Read the machine for :func:`choose_threads` (Linux; elsewhere what the OS tells)."""
    environ = os.environ if environ is None else environ
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    try:
        load: float | None = os.getloadavg()[0]
    except (OSError, AttributeError):
        load = None
    try:
        processes = int(environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        processes = 1
    return CpuReadings(
        cores=os.cpu_count() or 1,
        affinity=affinity,
        quota=cgroup_quota(),
        load=load,
        running=_running_tasks(),
        own=_own_load(),
        processes=processes,
        omp_num_threads=environ.get("OMP_NUM_THREADS"),
    )


def _running_tasks() -> tuple[int, ...]:
    """Readings of the runnable tasks (the 4th field of /proc/loadavg, "running/total")."""
    readings = []
    for i in range(_RUNNING_READS):
        try:
            field = Path("/proc/loadavg").read_text().split()[3]
            readings.append(int(field.split("/")[0]))
        except (OSError, IndexError, ValueError):
            return ()
        if i + 1 < _RUNNING_READS:
            time.sleep(0.01)
    return tuple(readings)


def _own_load() -> float:
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        start = float(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        elapsed = float(Path("/proc/uptime").read_text().split()[0]) - start
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0
    times = os.times()
    return own_load(times.user + times.system, elapsed)


def prepare_threads(
    requested: int | None, environ: MutableMapping[str, str] | None = None
) -> ThreadChoice:
    """The command line's policy: choose the threads, and report the OpenMP wait policy
    the user set in ``environ`` (default: this process's environment), which step 4 leaves
    as it is.

    Raises:
        ConfigError: ``requested`` below 1.
    """
    environ = os.environ if environ is None else environ
    if requested is not None:
        choice = choose_threads(CpuReadings(cores=os.cpu_count() or 1), requested)
    else:
        choice = choose_threads(read_cpus(environ))
    policy = environ.get(WAIT_POLICY)
    words = None if policy is None else f"{policy} (as set)"
    return ThreadChoice(choice.threads, choice.reason, words)


def api_thread_policy(threads: int | None) -> dict[str, Any]:
    """The JSON ``config.thread_policy`` of a scan run through the Python API (the command
    line puts its own :class:`ThreadChoice` in its place)."""
    import torch

    reason = (
        "torch's setting as found (the Python API changes it only when ScanConfig.threads is set)"
        if threads is None
        else f"ScanConfig.threads = {threads}"
    )
    return {
        "threads": torch.get_num_threads(),
        "reason": reason,
        "omp_wait_policy": os.environ.get(WAIT_POLICY),
    }


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """torch's intra-op threads set to ``threads`` inside the block and put back after;
    None leaves them as they are. Yields the threads in force."""
    import torch

    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield before
        return
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
