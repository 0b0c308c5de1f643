"""Per-layer Hessian traces: wciaudit's engines against plain loops, PyHessian and exact.

Runs in one process, on the same model, adversarial examples and probe distribution:

- ``wciaudit auto``: :func:`wciaudit.curvature.layer_traces` with ``method="auto"``
  (exact Gauss-Newton route where it is exact, SPEC: Layers, norms, curvature);
- ``wciaudit hutchinson``: the block-restricted engine (one graph, batched probes);
- ``plain per-layer``: the naive baseline, one ``autograd.grad(create_graph=True)``
  graph over the whole data per probe, Rademacher probe restricted to one layer;
- ``plain shared``: one whole-model Rademacher probe per graph, read as v_k.(Hv)_k
  per layer (shows the variance the cross-block terms add);
- ``pyhessian``: ``PyHessian.hessian(...).trace()`` when installed (whole-model total
  over the layer weights only; no per-layer figures);
- ``exact dense``: ``torch.func.hessian`` per layer, on a tiny CNN (ground truth).

The figure that matters is the time to reach 5% relative standard error on every
layer (or the exact value), relative to the plain per-layer loop. Hutchinson rows
are, by default, a pilot run plus an extrapolation (see benchmarks/README.md); the
``--full`` flag runs every stop rule for real instead.

Usage:
    python benchmarks/trace_speed.py            # default run, a few minutes on 2 cores
    python benchmarks/trace_speed.py --quick    # smoke run, < 60 s
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import platform
import resource
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import wciaudit
from wciaudit.attacks.pgd import attack_split
from wciaudit.config import ScanConfig
from wciaudit.curvature import layer_traces, residual_vanishes
from wciaudit.curvature.objective import Objective
from wciaudit.data import stratified_subset
from wciaudit.model import AuditedModel, eval_mode, no_tf32, weight_layers

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "cnn": ("sample_models/digits_cnn.safetensors", "sample_models/digits_cnn.py"),
    "resnet": ("sample_models/digits_resnet_pgd.safetensors", None),
    "vit": ("sample_models/digits_vit", None),
}
TOL = 0.05
MIN_PROBES = 10


# ---------------------------------------------------------------------------------------
# measurement helpers


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rademacher(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=g).float().mul_(2).sub_(1)


Stats = tuple[int, float, float]  # (n, mean, sample variance) of single-probe values v^T H v


def stats_of(values: list[float]) -> Stats:
    return (
        len(values),
        statistics.fmean(values),
        statistics.variance(values) if len(values) > 1 else 0.0,
    )


def pool(a: Stats, b: Stats) -> Stats:
    """Combine two samples of the same distribution (Chan et al.'s pairwise update)."""
    (na, ma, va), (nb, mb, vb) = a, b
    n = na + nb
    mean = (na * ma + nb * mb) / n
    m2 = (na - 1) * va + (nb - 1) * vb + (ma - mb) ** 2 * na * nb / n
    return n, mean, m2 / (n - 1)


def probes_needed(s: Stats, tol: float = TOL, min_probes: int = MIN_PROBES) -> float:
    """Probes at which sd / sqrt(n) reaches tol * |mean|: (sd / (tol |mean|))^2, at least
    ``min_probes``; no cap."""
    _, mean, var = s
    if mean == 0:
        return math.inf
    return max(float(min_probes), var / (tol * mean) ** 2)


def rel_spread(s: Stats) -> float:
    """Per-probe relative spread sd / |mean| (the SPEC's 0.05-0.3 vs 1-10 figure)."""
    _, mean, var = s
    return math.inf if mean == 0 else math.sqrt(var) / abs(mean)


def max_rel_err(est: dict[str, float], exact: dict[str, float] | None) -> float | None:
    if not exact:
        return None
    return max(abs(est[n] - exact[n]) / abs(exact[n]) for n in exact if exact[n] != 0)


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


# ---------------------------------------------------------------------------------------
# models and data


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
    key: str, args: argparse.Namespace, splits: wciaudit.Splits, device: torch.device
) -> Setup:
    idx = stratified_subset(splits.y_train, args.hessian_samples, 0)
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
    cfg = ScanConfig(eps=0.1, steps=10, device=str(device), batch_size=args.batch_size)
    sync(device)
    t0 = time.perf_counter()
    x_adv = attack_split(net, x, y, cfg, device)
    sync(device)
    attack_s = time.perf_counter() - t0
    names = [f"model.{layer.name}" for layer in weight_layers(bare)]
    return Setup(key, net, names, x_adv, y, device, args.batch_size, attack_s)


def dense_traces(setup: Setup) -> dict[str, float]:
    """Tr(H_kk) from the dense float64 block, torch.func.hessian per layer."""
    net64 = AuditedModel(setup.net.model, [0.5], [0.5])
    net64 = _copy_double(net64)
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


def _copy_double(net: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(net).double().cpu().eval()


# ---------------------------------------------------------------------------------------
# the estimators


def _weights(setup: Setup) -> dict[str, torch.Tensor]:
    params = dict(setup.net.named_parameters())
    return {n: params[n].detach().requires_grad_(True) for n in setup.names}


def _batches(setup: Setup) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, setup.x.shape[0], setup.batch_size):
        yield (
            setup.x[i : i + setup.batch_size].to(setup.device),
            setup.y[i : i + setup.batch_size].to(setup.device),
        )


def plain_probe(setup: Setup, w: dict[str, torch.Tensor], name: str, v: torch.Tensor) -> float:
    """v^T H_kk v with a fresh double-backward graph over the whole data (the naive loop)."""
    total = 0.0
    n = setup.x.shape[0]
    for xb, yb in _batches(setup):
        loss = (
            F.cross_entropy(functional_call(setup.net, {name: w[name]}, (xb,)), yb, reduction="sum")
            / n
        )
        (g,) = torch.autograd.grad(loss, w[name], create_graph=True)
        (hv,) = torch.autograd.grad(g, w[name], grad_outputs=v)
        total += float((hv * v).sum())
    return total


def shared_probe(setup: Setup, w: dict[str, torch.Tensor], vs: list[torch.Tensor]) -> list[float]:
    """One whole-model probe: v_k . (Hv)_k per layer, from one full Hessian-vector product."""
    out = [0.0] * len(vs)
    n = setup.x.shape[0]
    wl = [w[name] for name in setup.names]
    for xb, yb in _batches(setup):
        loss = F.cross_entropy(functional_call(setup.net, w, (xb,)), yb, reduction="sum") / n
        grads = torch.autograd.grad(loss, wl, create_graph=True)
        hvs = torch.autograd.grad(grads, wl, grad_outputs=vs, allow_unused=True)
        for k, (hv, v) in enumerate(zip(hvs, vs, strict=True)):
            out[k] += 0.0 if hv is None else float((hv * v).sum())
    return out


def plain_stop_rule(
    setup: Setup, w: dict[str, torch.Tensor], name: str, seed: int, max_probes: int
) -> list[float]:
    """The engine's stop rule, run with the plain loop: min_probes first, then rounds of
    the probes the running variance asks for, until SE <= tol |mean| or the cap."""
    g = torch.Generator().manual_seed(seed)
    shape = tuple(w[name].shape)
    values: list[float] = []
    want = MIN_PROBES
    while want > 0:
        values += [
            plain_probe(setup, w, name, rademacher(shape, g).to(setup.device)) for _ in range(want)
        ]
        mean, sd = statistics.fmean(values), statistics.stdev(values)
        count = len(values)
        if sd / math.sqrt(count) <= TOL * abs(mean) or count >= max_probes:
            break
        needed = math.inf if mean == 0 else (sd / (TOL * abs(mean))) ** 2
        want = int(min(math.ceil(max(needed * 1.1 - count, count / 2, 4)), max_probes - count))
    return values


def graph_seconds(setup: Setup, reps: int = 1) -> float:
    """One forward + create_graph backward over all layers (the engine's per-round cost)."""
    w = _weights(setup)
    best = math.inf
    for _ in range(reps):
        sync(setup.device)
        t0 = time.perf_counter()
        n = setup.x.shape[0]
        for xb, yb in _batches(setup):
            loss = F.cross_entropy(functional_call(setup.net, w, (xb,)), yb, reduction="sum") / n
            torch.autograd.grad(loss, list(w.values()), create_graph=True)
        sync(setup.device)
        best = min(best, time.perf_counter() - t0)
    return best


def _engine_round(
    setup: Setup, probes: int, seed: int
) -> tuple[dict[str, Stats], list[float], float]:
    """The engine with exactly ``probes`` probes per layer (one round: tol 0, cap = probes);
    returns per-layer (n, mean, var), the progress-callback times relative to the start
    (with <= 32 probes per layer it fires once per layer, in layer order) and the total."""
    stamps: list[float] = []
    sync(setup.device)
    t0 = time.perf_counter()
    est = layer_traces(
        setup.net,
        setup.x,
        setup.y,
        setup.names,
        method="hutchinson",
        tol=0.0,
        max_probes=probes,
        min_probes=probes,
        seed=seed,
        batch_size=setup.batch_size,
        device=setup.device,
        progress=lambda kind, k: stamps.append(time.perf_counter() - t0),
    )
    sync(setup.device)
    total = time.perf_counter() - t0
    # after one round, mean and SE give the sample mean and sd of the probe values
    stats = {e.name: (probes, e.trace, (e.se * math.sqrt(probes)) ** 2) for e in est}
    return stats, stamps, total


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
# one model


def bench_model(
    setup: Setup, args: argparse.Namespace, log: Callable[[str], None]
) -> tuple[list[Row], dict]:
    rows: list[Row] = []
    key, dev = setup.key, setup.device
    full = args.full or key in args.run_engine
    w = _weights(setup)
    extra: dict = {}

    # -- the exact route / auto -----------------------------------------------------------
    t0 = time.perf_counter()
    exact_flags = residual_vanishes(
        Objective(setup.net, setup.x, setup.y, setup.names, setup.batch_size, dev)
    )
    check_s = time.perf_counter() - t0
    n_exact = sum(exact_flags.values())
    auto_values: dict[str, float] | None = None
    if n_exact == len(setup.names) or args.full:
        with PeakMemory(dev) as mem:
            sync(dev)
            t0 = time.perf_counter()
            est = layer_traces(
                setup.net,
                setup.x,
                setup.y,
                setup.names,
                method="auto",
                batch_size=setup.batch_size,
                device=dev,
                seed=args.seed,
            )
            sync(dev)
            secs = time.perf_counter() - t0
        auto_values = {e.name: e.trace for e in est}
        rel = [e.rel_se or 0.0 for e in est if e.method == "hutchinson"]
        exact_layers = sum(e.method == "exact-ggn" for e in est)
        rows.append(
            Row(
                key,
                "wciaudit auto",
                secs,
                "measured",
                "exact" if not rel else sum(e.probes for e in est if isinstance(e.probes, int)),
                max(rel) if rel else 0.0,
                max_rel_err(auto_values, setup.exact),
                mem.mib,
                f"{exact_layers}/{len(est)} layers exact-ggn",
            )
        )
        if setup.exact is None and exact_layers == len(est):
            setup.exact, setup.exact_label = auto_values, "exact-ggn"
    log(f"  {key}: route check {check_s:.1f}s, {n_exact}/{len(setup.names)} layers exact")

    # -- pilots: engine, plain per-layer, shared ----------------------------------------
    g = torch.Generator().manual_seed(args.seed + 1)
    plain_probe(
        setup, w, setup.names[0], rademacher(tuple(w[setup.names[0]].shape), g).to(dev)
    )  # warm-up
    p1, p2 = args.pilot_probes
    with PeakMemory(dev) as mem_engine:
        eng_values, eng_cost, graph_s, eng_total = engine_pilot(setup, p1, p2, args.seed)
    plain_values: dict[str, list[float]] = {}
    plain_cost: dict[str, float] = {}
    with PeakMemory(dev) as mem_plain:
        for name in setup.names:
            vals = []
            sync(dev)
            t0 = time.perf_counter()
            for _ in range(args.plain_probes):
                vals.append(
                    plain_probe(setup, w, name, rademacher(tuple(w[name].shape), g).to(dev))
                )
            sync(dev)
            plain_cost[name] = (time.perf_counter() - t0) / args.plain_probes
            plain_values[name] = vals
    log(
        f"  {key}: engine pilot {eng_total:.1f}s, plain pilot {sum(plain_cost.values()) * args.plain_probes:.1f}s"
    )
    shared_vals: dict[str, list[float]] = {n: [] for n in setup.names}
    with PeakMemory(dev) as mem_shared:
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(args.shared_probes):
            vs = [rademacher(tuple(w[n].shape), g).to(dev) for n in setup.names]
            for n, val in zip(setup.names, shared_probe(setup, w, vs), strict=True):
                shared_vals[n].append(val)
        sync(dev)
        shared_cost = (time.perf_counter() - t0) / args.shared_probes

    # restricted probes of the engine and of the plain loop sample the same distribution
    # (v^T H_kk v, v Rademacher on block k): pool them for the variance
    pooled = {
        n: pool(eng_values[n], stats_of(plain_values[n]))
        if len(plain_values[n]) > 1
        else eng_values[n]
        for n in setup.names
    }
    need = {n: probes_needed(pooled[n]) for n in setup.names}
    probes_5 = int(sum(math.ceil(v) for v in need.values()))
    extra["spread_restricted"] = [rel_spread(pooled[n]) for n in setup.names]
    extra["spread_shared"] = [rel_spread(stats_of(shared_vals[n])) for n in setup.names]
    pilot_means = {n: pooled[n][1] for n in setup.names}
    extra["pilot_sum"] = sum(pilot_means.values())

    # plain per-layer loop
    if full:
        with PeakMemory(dev) as mem:
            t0 = time.perf_counter()
            got = {
                n: plain_stop_rule(setup, w, n, args.seed + 2 + i, args.max_probes)
                for i, n in enumerate(setup.names)
            }
            plain_s = time.perf_counter() - t0
        means = {n: statistics.fmean(v) for n, v in got.items()}
        rses = [
            statistics.stdev(v) / math.sqrt(len(v)) / abs(statistics.fmean(v)) for v in got.values()
        ]
        rows.append(
            Row(
                key,
                "plain per-layer loop",
                plain_s,
                "measured",
                sum(len(v) for v in got.values()),
                max(rses),
                max_rel_err(means, setup.exact),
                mem.mib,
                "same stop rule",
            )
        )
    else:
        plain_s = sum(math.ceil(need[n]) * plain_cost[n] for n in setup.names)
        rows.append(
            Row(
                key,
                "plain per-layer loop",
                plain_s,
                "extrapolated",
                probes_5,
                TOL,
                None,
                mem_plain.mib,
                f"{args.plain_probes} timed probe(s)/layer",
            )
        )

    # the engine
    if full:
        with PeakMemory(dev) as mem:
            sync(dev)
            t0 = time.perf_counter()
            est = layer_traces(
                setup.net,
                setup.x,
                setup.y,
                setup.names,
                method="hutchinson",
                batch_size=setup.batch_size,
                device=dev,
                seed=args.seed,
                max_probes=args.max_probes,
            )
            sync(dev)
            secs = time.perf_counter() - t0
        predicted = graph_s + sum(math.ceil(need[n]) * eng_cost[n] for n in setup.names)
        rows.append(
            Row(
                key,
                "wciaudit hutchinson",
                secs,
                "measured",
                sum(e.probes for e in est),
                max(e.rel_se for e in est),
                max_rel_err({e.name: e.trace for e in est}, setup.exact),
                mem.mib,
                f"extrapolation said {predicted:.1f}s",
            )
        )
        hutch_s = secs
    else:
        hutch_s = graph_s + sum(math.ceil(need[n]) * eng_cost[n] for n in setup.names)
        rows.append(
            Row(
                key,
                "wciaudit hutchinson",
                hutch_s,
                "extrapolated",
                probes_5,
                TOL,
                None,
                mem_engine.mib,
                f"pilots {p1}+{p2} probes/layer",
            )
        )
    if auto_values is None:  # auto = route check + the engine everywhere
        rows.append(
            Row(
                key,
                "wciaudit auto",
                check_s + hutch_s,
                rows[-1].how,
                probes_5,
                TOL,
                None,
                rows[-1].peak_mib,
                "no layer exact: route check + hutchinson",
            )
        )

    # plain shared (whole-model probe): every layer needs the worst layer's probes
    shared_need = max(probes_needed(stats_of(v)) for v in shared_vals.values())
    rows.append(
        Row(
            key,
            "plain shared probe",
            shared_need * shared_cost,
            "extrapolated",
            int(math.ceil(shared_need)),
            TOL,
            None,
            mem_shared.mib,
            f"{args.shared_probes} timed probes; {int(math.ceil(shared_need))} probes x {len(setup.names)} layers read",
        )
    )

    # PyHessian (whole-model total only)
    extra["exact_sum"] = None if setup.exact is None else sum(setup.exact.values())
    rows.extend(pyhessian_rows(setup, args, extra))
    extra["pilot_err"] = max_rel_err(pilot_means, setup.exact)

    for r in rows:
        r.speedup = plain_s / r.seconds if r.seconds > 0 else None
    return rows, extra


def pyhessian_rows(setup: Setup, args: argparse.Namespace, extra: dict) -> list[Row]:
    try:
        from pyhessian import hessian as PyHessian  # noqa: N812
    except ImportError:
        extra["pyhessian"] = "not installed (pip install pyhessian)"
        return []
    net, dev = setup.net, setup.device
    layer_set = set(setup.names)
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    # PyHessian differentiates every parameter that requires grad: keep the layers only,
    # so its total is sum_k Tr(H_kk) over the same layers
    for n, p in net.named_parameters():
        p.requires_grad_(n in layer_set)
    try:
        torch.manual_seed(args.seed)  # PyHessian draws its probes from the global RNG
        x, y = setup.x.to(dev), setup.y.to(dev)
        with PeakMemory(dev) as mem:
            sync(dev)
            t0 = time.perf_counter()
            hc = PyHessian(net, nn.CrossEntropyLoss(), data=(x, y), cuda=dev.type == "cuda")
            t_graph = time.perf_counter() - t0
            vals = hc.trace(maxIter=args.pyhessian_probes, tol=1e-3)
            sync(dev)
            secs = time.perf_counter() - t0
        del hc
    finally:
        for n, p in net.named_parameters():
            p.grad = None  # PyHessian leaves graph-carrying .grad behind
            p.requires_grad_(flags[n])
    mean = statistics.fmean(vals)
    sd = statistics.stdev(vals) if len(vals) > 1 else math.inf
    rse = sd / math.sqrt(len(vals)) / abs(mean)
    per_probe = (secs - t_graph) / len(vals)
    need = max(float(len(vals)), (sd / (TOL * abs(mean))) ** 2)
    ref = extra.get("exact_sum") or (
        sum(setup.exact.values()) if setup.exact else extra["pilot_sum"]
    )
    extra["pyhessian"] = (
        f"total {mean:.4g} +- {sd / math.sqrt(len(vals)):.2g} over {len(vals)} probes "
        f"(own stop rule: running mean moved < 1e-3), sum of per-layer traces {ref:.4g}"
    )
    return [
        Row(
            setup.key,
            "pyhessian trace()",
            secs,
            "measured",
            len(vals),
            rse,
            abs(mean - ref) / abs(ref) if setup.exact else None,
            mem.mib,
            "whole-model total only",
        ),
        Row(
            setup.key,
            "pyhessian to 5% (total)",
            t_graph + need * per_probe,
            "extrapolated",
            int(math.ceil(need)),
            TOL,
            None,
            mem.mib,
            "total only, not per layer",
        ),
    ]


# ---------------------------------------------------------------------------------------
# scaling with samples and probes


def scaling_rows(
    key: str,
    args: argparse.Namespace,
    splits: wciaudit.Splits,
    device: torch.device,
    log: Callable[[str], None],
) -> list[tuple]:
    out = []
    first = True
    for n in args.sizes:
        a = argparse.Namespace(
            **{**vars(args), "hessian_samples": n, "batch_size": min(n, args.batch_size)}
        )
        setup = build_setup(key, a, splits, device)
        for method, probes in (
            ("auto", None),
            ("hutchinson", args.scale_probes),
            ("hutchinson", 2 * args.scale_probes),
        ):
            if first:  # warm-up: first calls pay one-off kernel and import costs
                layer_traces(
                    setup.net,
                    setup.x,
                    setup.y,
                    setup.names,
                    method=method,
                    tol=0.0,
                    min_probes=2,
                    max_probes=2,
                    batch_size=setup.batch_size,
                    device=device,
                )
            secs = math.inf
            for _ in range(2):  # best of two: the machine may be shared
                with PeakMemory(device) as mem:
                    sync(device)
                    t0 = time.perf_counter()
                    kw = (
                        {}
                        if probes is None
                        else {"tol": 0.0, "min_probes": probes, "max_probes": probes}
                    )
                    layer_traces(
                        setup.net,
                        setup.x,
                        setup.y,
                        setup.names,
                        method=method,
                        batch_size=setup.batch_size,
                        device=device,
                        seed=args.seed,
                        **kw,
                    )
                    sync(device)
                    secs = min(secs, time.perf_counter() - t0)
            label = "auto (exact)" if probes is None else f"hutchinson {probes}/layer"
            out.append((key, n, label, secs, mem.mib))
        first = False
        log(f"  scaling: {key} n={n} done")
    return out


# ---------------------------------------------------------------------------------------
# output


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[Row]) -> None:
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
    _print_plain(head, body)


def _print_plain(head: list[str], body: list[list[str]]) -> None:
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    print(line)
    print("-" * len(line))
    for b in body:
        print("  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--models", default="tiny,cnn,resnet,vit", help="comma list of tiny, cnn, resnet, vit"
    )
    p.add_argument(
        "--hessian-samples",
        type=int,
        default=128,
        help="adversarial examples the Hessian is taken over",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="examples per graph (one graph: the engine reuses it)",
    )
    p.add_argument(
        "--sizes", default="128,256,512", help="sample counts for the scaling table ('' to skip)"
    )
    p.add_argument("--scale-model", default="cnn", help="model of the scaling table")
    p.add_argument(
        "--scale-probes",
        type=int,
        default=10,
        help="probes per layer in the scaling table (and twice that)",
    )
    p.add_argument(
        "--pilot-probes",
        default="2,8",
        help="engine pilots: P1,P2 probes per layer (P1 < P2 <= 32)",
    )
    p.add_argument(
        "--plain-probes", type=int, default=1, help="plain loop pilot: timed probes per layer"
    )
    p.add_argument(
        "--shared-probes", type=int, default=10, help="whole-model shared-probe pilot: probes"
    )
    p.add_argument("--pyhessian-probes", type=int, default=20, help="PyHessian trace(maxIter=...)")
    p.add_argument(
        "--max-probes", type=int, default=200, help="probe cap of the real stop rules (--full)"
    )
    p.add_argument("--run-engine", default="", help="models on which every stop rule runs for real")
    p.add_argument(
        "--full", action="store_true", help="run every stop rule for real on every model (slow)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run, < 60 s")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.hessian_samples, args.batch_size = "tiny,cnn", 64, 64
        args.sizes, args.scale_probes, args.pilot_probes = "32,64", 4, "2,6"
        args.plain_probes, args.shared_probes, args.pyhessian_probes = 1, 6, 6
        args.run_engine = ""
    args.models = [m for m in args.models.split(",") if m]
    args.run_engine = [m for m in args.run_engine.split(",") if m]
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    for m in args.models + args.run_engine + ([args.scale_model] if args.sizes else []):
        if m not in MODELS and m != "tiny":
            p.error(f"unknown model {m!r}; choose from tiny, {', '.join(MODELS)}")
    args.pilot_probes = tuple(int(v) for v in args.pilot_probes.split(","))
    if len(args.pilot_probes) != 2 or not 2 <= args.pilot_probes[0] < args.pilot_probes[1] <= 32:
        p.error("--pilot-probes must be P1,P2 with 2 <= P1 < P2 <= 32 (one probe chunk per layer)")
    if args.plain_probes < 1 or args.shared_probes < 2 or args.pyhessian_probes < 2:
        p.error("--plain-probes >= 1, --shared-probes >= 2 and --pyhessian-probes >= 2")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    return_freed_memory()
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.script notices
    # PyHessian calls backward(create_graph=True); its .grad fields are reset after use
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but no CUDA device is available")
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    try:
        import pyhessian  # noqa: F401

        ph = "installed"
    except ImportError:
        ph = "not installed"
    print(
        f"torch {torch.__version__}, wciaudit {wciaudit.__version__}, python {platform.python_version()}"
    )
    print(
        f"device {device}"
        + (
            f" ({torch.cuda.get_device_name(device)})"
            if device.type == "cuda"
            else f" ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        )
        + f", torch threads {torch.get_num_threads()}, TF32 off, pyhessian {ph}"
    )
    print(
        f"hessian samples {args.hessian_samples}, batch {args.batch_size}, tol {TOL}, "
        f"min probes {MIN_PROBES}, attack PGD-10 eps 0.1 (model in eval mode)"
    )
    splits = wciaudit.load_data("sample")
    all_rows: list[Row] = []
    extras: dict[str, dict] = {}
    attack_s: dict[str, float] = {}
    # timm's ViT uses fused scaled_dot_product_attention, whose CPU kernel has no double
    # backward; the math kernel is the same function built from differentiable ops
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with no_tf32(), sdpa_kernel([SDPBackend.MATH]):
        for key in args.models:
            log(f"{key}: load + attack")
            setup = build_setup(key, args, splits, device)
            attack_s[key] = setup.attack_s
            with eval_mode(setup.net):
                if key == "tiny":
                    t0 = time.perf_counter()
                    setup.exact, setup.exact_label = dense_traces(setup), "dense"
                    dense_s = time.perf_counter() - t0
                rows, extra = bench_model(setup, args, log)
                if key == "tiny":
                    rows.insert(
                        0,
                        Row(
                            key,
                            "exact dense (torch.func.hessian)",
                            dense_s,
                            "measured",
                            "exact",
                            0.0,
                            0.0,
                            None,
                            "float64, ground truth",
                        ),
                    )
                    plain = next(r for r in rows if r.method == "plain per-layer loop")
                    rows[0].speedup = plain.seconds / dense_s
            extra["exact_label"] = setup.exact_label
            extras[key] = extra
            all_rows += rows
        scale = scaling_rows(args.scale_model, args, splits, device, log) if args.sizes else []

    print()
    print(
        "Time to 5% relative SE on every layer (or exact); speed-up = plain per-layer seconds / seconds"
    )
    if all_rows:
        print_table(all_rows)
    print()
    print(
        "Per-probe relative spread sd/|mean| per layer (median, max): block-restricted vs whole-model shared probe"
    )
    for key, e in extras.items():
        r, s = e["spread_restricted"], e["spread_shared"]
        print(
            f"  {key:7s} restricted {statistics.median(r):6.2f} {max(r):7.2f}   shared {statistics.median(s):7.2f} {max(s):8.2f}"
        )
    print()
    for key, e in extras.items():
        ref = f"exact reference: {e['exact_label']}" if e["exact_label"] else "no exact reference"
        pilot = "" if e["pilot_err"] is None else f", pilot means max err {e['pilot_err']:.2e}"
        print(f"  {key}: attack {attack_s[key]:.1f}s; {ref}{pilot}")
        if "pyhessian" in e:
            print(f"    pyhessian: {e['pyhessian']}")
    if scale:
        print()
        print(f"Scaling on {args.scale_model}: seconds grow linearly with samples and probes")
        head = ["model", "samples", "method", "seconds", "ms / sample", "peak MiB"]
        _print_plain(
            head,
            [
                [k, str(n), m, f"{s:.2f}", f"{1000 * s / n:.2f}", f"{mem:.0f}"]
                for k, n, m, s, mem in scale
            ],
        )
    print(f"\ntotal {time.perf_counter() - t_start:.0f}s")


if __name__ == "__main__":
    main()
