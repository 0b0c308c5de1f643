"""What the benchmark scripts share: set-ups, timing, memory, probe statistics, tables.

Mean and standard error come from the library (:func:`wciaudit.curvature.mean_and_se`),
and so does the size of the plain loop's next round
(:func:`wciaudit.curvature.growth.more_probes`); the probe count its stop rule aims at is
written here (:func:`probes_needed`), for the i.i.d. probes of the plain baselines. The
PGD attack is imported here only, for both scripts.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import math
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

import wciaudit
from wciaudit.attacks.pgd import attack_split
from wciaudit.config import ScanConfig
from wciaudit.curvature import Objective, TraceEstimate, layer_traces, mean_and_se
from wciaudit.curvature.growth import more_probes
from wciaudit.curvature.hutchinson import probe_round
from wciaudit.data import stratified_subset
from wciaudit.model import AuditedModel, weight_layers

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "cnn": ("sample_models/digits_cnn.safetensors", "sample_models/digits_cnn.py"),
    "resnet": ("sample_models/digits_resnet_pgd.safetensors", None),
    "vit": ("sample_models/digits_vit", None),
}
TOL = 0.05
MIN_PROBES = 10


# ---------------------------------------------------------------------------------------
# timing and memory


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall seconds of a ``with`` block, with the device synchronised at both ends."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        sync(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = self.seconds_so_far()

    def seconds_so_far(self) -> float:
        sync(self.device)
        return time.perf_counter() - self._t0


class PeakMemory:
    """Peak memory above the level at entry, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the resident set size, polled from
    ``/proc/self/statm`` by a thread every 2 ms (``ru_maxrss`` is a process-lifetime
    maximum, so its delta stays 0 once an earlier stage peaked higher; it is the
    fallback where ``/proc`` is missing).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._statm = Path("/proc/self/statm")
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._start = self._rss()
        self._peak = self._start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        if self._statm.exists():
            return int(self._statm.read_text().split()[1]) * self._page
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._rss()) - self._start
        self.mib = max(peak, 0) / 2**20


def return_freed_memory() -> None:
    """Make glibc serve allocations >= 64 KiB by mmap and unmap them on free, so the
    resident set size follows live tensors (by default freed memory stays resident and
    a later stage's peak hides under an earlier one). Linux/glibc only; else a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD


# ---------------------------------------------------------------------------------------
# probe statistics

Stats = tuple[int, float, float]  # (n, mean, sample variance) of single-probe values v^T H v


def stats_of(values: list[float]) -> Stats:
    """(n, mean, sample variance) from the library's mean and SE: var = n * SE^2."""
    mean, se = mean_and_se(values)
    return len(values), mean, len(values) * se**2 if len(values) > 1 else 0.0


def pool(a: Stats, b: Stats) -> Stats:
    """Combine two samples of the same distribution (Chan et al.'s pairwise update).

    The engine reports a round as (mean, SE), not its probe values, so two summaries
    are merged here; the library has no pooling of its own."""
    (na, ma, va), (nb, mb, vb) = a, b
    n = na + nb
    mean = (na * ma + nb * mb) / n
    m2 = (na - 1) * va + (nb - 1) * vb + (ma - mb) ** 2 * na * nb / n
    return n, mean, m2 / (n - 1)


# The stop rule of the plain baselines (i.i.d. probes, no groups), with the library's
# growth rule.


def probes_needed(mean: float, se: float, count: int, tol: float) -> float:
    """Probes at which SE reaches tol |mean|: (sd / (tol |mean|))^2 with sd = se sqrt(count);
    infinite when the mean is 0."""
    if mean == 0:
        return math.inf
    return (se * math.sqrt(count) / (tol * abs(mean))) ** 2


def next_round(values: list[float], *, tol: float, max_probes: int) -> tuple[str | None, int]:
    """The stop rule after a round: ``("tol", 0)`` at SE <= tol |mean|, ``("cap", 0)`` at
    ``max_probes``, else ``(None, k)``: draw the k more the library's growth rule gives
    (:func:`wciaudit.curvature.growth.more_probes`: max(1.1 needed - n, n / 2, 4), up to
    the cap)."""
    mean, se = mean_and_se(values)
    count = len(values)
    if se <= tol * abs(mean):
        return "tol", 0
    if count >= max_probes:
        return "cap", 0
    return None, more_probes(count, probes_needed(mean, se, count, tol), max_probes)


def probes_to_tol(s: Stats, tol: float = TOL, min_probes: int = MIN_PROBES) -> float:
    """Probes a layer with per-probe statistics ``s`` needs to reach relative SE ``tol``,
    at least ``min_probes``; no cap."""
    n, mean, var = s
    return max(float(min_probes), probes_needed(mean, math.sqrt(var / n), n, tol))


def rel_spread(s: Stats) -> float:
    """Per-probe relative spread sd / |mean| (the SPEC's 0.05-0.3 vs 1-10 figure)."""
    _, mean, var = s
    return math.inf if mean == 0 else math.sqrt(var) / abs(mean)


def max_rel_err(est: dict[str, float], exact: dict[str, float] | None) -> float | None:
    if not exact:
        return None
    return max(abs(est[n] - exact[n]) / abs(exact[n]) for n in exact if exact[n] != 0)


# ---------------------------------------------------------------------------------------
# set-ups: a model, its layers and adversarial examples


@dataclass
class Row:
    model: str
    method: str
    seconds: float
    how: str  # "measured" or "extrapolated"
    probes: int | str
    rel_se: float | None = None
    err_exact: float | None = None
    peak_mib: float | None = None
    note: str = ""
    speedup: float | None = None


@dataclass
class Setup:
    key: str
    net: nn.Module
    names: list[str]
    x: torch.Tensor  # adversarial examples, CPU
    y: torch.Tensor
    device: torch.device
    batch_size: int
    attack_s: float
    exact: dict[str, float] | None = None  # reference per-layer traces
    exact_label: str = ""
    notes: list[str] = field(default_factory=list)


def layer_names(bare: nn.Module) -> list[str]:
    """Names of the layer weights inside an ``AuditedModel`` wrapping ``bare``."""
    return [f"model.{layer.name}" for layer in weight_layers(bare)]


def tiny_cnn() -> nn.Module:
    """Conv-BN-ReLU-pool, conv-ReLU, avg-pool, linear: 36 + 288 + 320 weights, so the
    dense per-layer Hessian (320 x 320 at most) is cheap."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def train_tiny(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 150) -> nn.Module:
    """Full-batch Adam on the clean digits, seeded; BatchNorm statistics from training."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net((x - 0.5) / 0.5), y).backward()
        opt.step()
    return net.eval()


def build_setup(
    key: str, hessian_samples: int, batch_size: int, splits: wciaudit.Splits, device: torch.device
) -> Setup:
    """A digits model (``tiny`` or one of ``MODELS``) and a stratified subset of the
    train split attacked with PGD-10, eps 0.1."""
    idx = stratified_subset(splits.y_train, hessian_samples, 0)
    x, y = splits.x_train[idx], splits.y_train[idx]
    if key == "tiny":
        bare = train_tiny(tiny_cnn(), splits.x_train, splits.y_train)
        mean, std = [0.5], [0.5]
    else:
        path, arch = MODELS[key]
        loaded = wciaudit.load_checkpoint(
            ROOT / path, arch=None if arch is None else str(ROOT / arch)
        )
        bare, mean, std = loaded.model, loaded.info.mean, loaded.info.std
    net = AuditedModel(bare, mean, std).to(device).eval()
    cfg = ScanConfig(eps=0.1, steps=10, device=str(device), batch_size=batch_size)
    with Stopwatch(device) as sw:
        x_adv = attack_split(net, x, y, cfg, device)
    return Setup(key, net, layer_names(bare), x_adv, y, device, batch_size, sw.seconds)


def dense_traces(setup: Setup) -> dict[str, float]:
    """Tr(H_kk) from the dense float64 block, torch.func.hessian per layer."""
    net64 = copy.deepcopy(AuditedModel(setup.net.model, [0.5], [0.5])).double().cpu().eval()
    x, y = setup.x.double(), setup.y
    out = {}
    for name in setup.names:
        w0 = dict(net64.named_parameters())[name].detach()

        def loss(w: torch.Tensor, name: str = name) -> torch.Tensor:
            return F.cross_entropy(functional_call(net64, {name: w}, (x,)), y)

        out[name] = float(
            torch.func.hessian(loss)(w0).detach().reshape(w0.numel(), -1).diagonal().sum()
        )
    return out


# ---------------------------------------------------------------------------------------
# the engine's pilots


def measure_traces(
    setup: Setup,
    *,
    method: str,
    seed: int,
    n_population: int | None = None,
    weight_norms: list[float] | None = None,
    **settings: object,
) -> list[TraceEstimate]:
    """:func:`wciaudit.curvature.layer_traces` on the set-up's examples, with a scan's
    settings: ``method`` is the config's ``curvature``, the other keywords
    :class:`wciaudit.config.ScanConfig` fields."""
    objective = Objective(
        setup.net,
        setup.x,
        setup.y,
        setup.names,
        setup.batch_size,
        setup.device,
        n_population=n_population,
    )
    config = ScanConfig(curvature=method, seed=seed, **settings)
    return layer_traces(objective, config, weight_norms=weight_norms)


def fixed_probe_traces(
    setup: Setup, probes: int, seed: int, progress: Callable[[int], None] | None = None
) -> list[TraceEstimate]:
    """The engine's Hutchinson estimates with exactly ``probes`` probes per layer, in one
    round (``hutchinson.probe_round``; the stop rule does not run)."""
    objective = Objective(setup.net, setup.x, setup.y, setup.names, setup.batch_size, setup.device)
    with sdpa_kernel([SDPBackend.MATH]):
        return probe_round(
            objective, objective.names, probes, seed=seed, group_seed=seed, progress=progress
        )


def _engine_round(
    setup: Setup, probes: int, seed: int
) -> tuple[dict[str, Stats], list[float], float]:
    """The engine with exactly ``probes`` probes per layer (one round: tol 0, cap = probes);
    returns per-layer (n, mean, var), the progress-callback times relative to the start
    (with <= 32 probes per layer it fires once per layer, in layer order) and the total."""
    stamps: list[float] = []
    with Stopwatch(setup.device) as sw:
        est = fixed_probe_traces(
            setup, probes, seed, progress=lambda k: stamps.append(sw.seconds_so_far())
        )
    # after one round, mean and SE give the sample mean and sd of the probe values
    stats = {e.name: (probes, e.trace, (e.se * math.sqrt(probes)) ** 2) for e in est}
    return stats, stamps, sw.seconds


def engine_pilot(
    setup: Setup, p1: int, p2: int, seed: int
) -> tuple[dict[str, Stats], dict[str, float], float, float]:
    """Two engine rounds of ``p1`` and ``p2`` probes per layer (independent seeds).

    The per-layer seconds per probe come from the difference of the two runs' callback
    intervals, divided by p2 - p1, which cancels the graph build and set-up; the fixed
    cost is what the p1 run spent beyond its probes. Returns pooled per-layer stats,
    seconds per probe per layer, fixed seconds and the pilots' total seconds.
    """
    s1, st1, tot1 = _engine_round(setup, p1, seed + 1_000)
    s2, st2, tot2 = _engine_round(setup, p2, seed)
    stats = {n: pool(s1[n], s2[n]) for n in setup.names}
    if len(st1) == len(st2) == len(setup.names):
        d1 = [b - a for a, b in zip([0.0, *st1[:-1]], st1, strict=True)]
        d2 = [b - a for a, b in zip([0.0, *st2[:-1]], st2, strict=True)]
        cost = {n: max(y - x, 0.0) / (p2 - p1) for n, x, y in zip(setup.names, d1, d2, strict=True)}
    else:  # an unexpected callback pattern: spread the difference evenly
        cost = {n: max(tot2 - tot1, 0.0) / (p2 - p1) / len(setup.names) for n in setup.names}
    fixed = max(tot1 - p1 * sum(cost.values()), 0.0)
    return stats, cost, fixed, tot1 + tot2


# ---------------------------------------------------------------------------------------
# output


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def print_plain(head: list[str], body: list[list[str]]) -> None:
    """A left-aligned text table: header, a rule, one line per row."""
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    print(line)
    print("-" * len(line))
    for b in body:
        print("  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip())


def print_rows(rows: list[Row]) -> None:
    """The side-by-side table of ``trace_speed.py``."""
    head = [
        "model",
        "method",
        "seconds",
        "how",
        "speed-up vs plain",
        "probes",
        "max rel SE",
        "max err vs exact",
        "peak MiB",
        "note",
    ]
    body = [
        [
            r.model,
            r.method,
            fmt(r.seconds, ".2f"),
            r.how,
            fmt(r.speedup, ".2f") + "x",
            str(r.probes),
            fmt(r.rel_se),
            fmt(r.err_exact, ".2e") if r.err_exact is not None else "-",
            fmt(r.peak_mib, ".0f"),
            r.note,
        ]
        for r in rows
    ]
    print_plain(head, body)
