"""Curvature at the scale people audit: timm models, attack time against trace time.

For each model, in one process, on the same synthetic data:

(a) ``attack``: wciaudit's PGD (``attack_split``: 10 steps, eps 8/255, L-inf) on the
    train and the test split, as a scan runs it;
(b) ``trace``: :func:`wciaudit.curvature.layer_traces` with ``method="auto"`` on the
    first ``--hessian-samples`` attacked train examples, routes chosen by the library;
(c) ``plain``: the plain per-layer double-backward Hutchinson loop (one fresh graph per
    probe, probe restricted to one layer; ``baselines.plain_probe``), timed for a few
    probes per layer and extrapolated to the per-layer relative SE that (b) reached.

Models are built offline with ``timm.create_model(pretrained=False)`` from a fixed
seed (random weights; the curvature engine's cost depends on the architecture, the
number of classes and the data size, not on training). Data are uniform images in
[0, 1] with uniform labels from a fixed seed.

Usage:
    python benchmarks/scale.py                   # all models, 256/256/256 samples
    python benchmarks/scale.py --quick           # smoke run, < 60 s
    python benchmarks/scale.py --models resnet18-1000,vit_tiny --threads 2
    python benchmarks/scale.py --device cuda
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from baselines import group_probe, layer_weights, plain_pilot, plain_probe
from common import (
    Setup,
    Stopwatch,
    attack_split,
    fmt,
    layer_names,
    measure_traces,
    pool,
    print_plain,
    probes_to_tol,
    stats_of,
)
from timm.data import resolve_data_config
from torch.nn.attention import SDPBackend, sdpa_kernel

import wciaudit
from wciaudit.bounds import weight_curvature_index
from wciaudit.config import ScanConfig
from wciaudit.curvature import TraceEstimate
from wciaudit.model import AuditedModel, eval_mode, no_tf32

IMAGE = (3, 32, 32)
EPS = 8 / 255


@dataclass(frozen=True)
class ModelSpec:
    """A timm architecture, its class count and the keyword arguments it is built with."""

    arch: str
    classes: int
    kwargs: dict[str, Any] = field(default_factory=dict)


# zero_init_last=False: timm zeroes the last BatchNorm of each residual block by default,
# which makes every block an identity at init and its layers' curvature degenerate.
# ls_init_value=1.0: ConvNeXt's layer scale starts at 1e-6, which scales the blocks'
# curvature by 1e-12; a trained ConvNeXt's layer scales are far from that.
SPECS = {
    "resnet18-10": ModelSpec("resnet18", 10, {"zero_init_last": False}),
    "resnet18-100": ModelSpec("resnet18", 100, {"zero_init_last": False}),
    "resnet18-1000": ModelSpec("resnet18", 1000, {"zero_init_last": False}),
    "vit_tiny": ModelSpec("vit_tiny_patch16_224", 10, {"img_size": 32, "patch_size": 4}),
    "convnext_atto": ModelSpec("convnext_atto", 10, {"ls_init_value": 1.0}),
}


@dataclass
class Result:
    """One model's figures; seconds are wall time."""

    key: str
    classes: int
    params: int
    attack_s: float
    trace_s: float
    plain_s: float
    routes: str
    wci_rel_se: float | None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# models and data


def build_model(spec: ModelSpec, seed: int, device: torch.device) -> AuditedModel:
    """The timm model with random weights from ``seed``, normalisation from its
    pretrained config (``resolve_data_config``), in eval mode on ``device``."""
    torch.manual_seed(seed)  # timm initialises from the global generator
    bare = timm.create_model(spec.arch, pretrained=False, num_classes=spec.classes, **spec.kwargs)
    cfg = resolve_data_config({}, model=bare)
    return AuditedModel(bare, cfg["mean"], cfg["std"]).to(device).eval()


def synthetic_split(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uniform images in [0, 1] of shape ``IMAGE`` and uniform labels < ``classes``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *IMAGE), generator=g), torch.randint(0, classes, (n,), generator=g)


# ---------------------------------------------------------------------------------------
# the three measurements


def attack_seconds(
    net: AuditedModel, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], cfg: ScanConfig
) -> tuple[torch.Tensor, float]:
    """PGD on train (stream 0) and test (stream 1); the attacked train inputs and the seconds."""
    device = torch.device(cfg.device)
    with Stopwatch(device) as sw:
        x_adv = attack_split(net, *splits["train"], cfg, device, stream=0)
        attack_split(net, *splits["test"], cfg, device, stream=1)
    return x_adv, sw.seconds


def trace_seconds(
    setup: Setup, args: argparse.Namespace, n_train: int
) -> tuple[list[TraceEstimate], float]:
    """``layer_traces`` (``curvature="auto"``, the WCI target) and its seconds."""
    params = dict(setup.net.named_parameters())
    norms = [float(params[n].detach().norm()) for n in setup.names]
    n_population = n_train if setup.x.shape[0] < n_train else None
    with Stopwatch(setup.device) as sw:
        est = measure_traces(
            setup,
            method="auto",
            seed=args.seed,
            n_population=n_population,
            weight_norms=norms,
            tol=args.tol,
            max_probes=args.max_probes,
        )
    return est, sw.seconds


def probe_rel_se(e: TraceEstimate) -> float:
    """The part of ``e``'s relative SE from probes or sampled labels (0 when exact)."""
    probe_se = e.probe_se or math.sqrt(max(e.se**2 - e.sample_se**2, 0.0))
    return 0.0 if e.trace == 0 else probe_se / abs(e.trace)


def plain_seconds(setup: Setup, est: list[TraceEstimate], args: argparse.Namespace) -> float:
    """The plain loop's seconds to reach, on every layer, the relative SE (b) reached.

    Per layer k: seconds per probe c_k from ``--plain-probes`` timed probes; per-probe
    variance s_k^2 of v^T H_kk v from those probes, pooled with (b)'s own probes where
    (b) took Hutchinson (the same distribution); the mean from (b). Probes needed:
    n_k = max(10, s_k^2 / (r_k |Tr_k|)^2), r_k = (b)'s probe relative SE, or
    ``--tol`` where (b) was exact (the plain loop cannot be exact). Seconds: sum_k n_k c_k.
    """
    w = layer_weights(setup)
    g = torch.Generator().manual_seed(args.seed + 1)
    first = setup.names[0]
    plain_probe(setup, w, first, group_probe(setup, tuple(w[first].shape), g))  # warm-up
    values, cost = plain_pilot(setup, w, args.plain_probes, g)
    total = 0.0
    for e in est:
        stats = stats_of(values[e.name])
        if e.method == "hutchinson" and isinstance(e.probes, int) and e.probes > 1:
            rse = probe_rel_se(e)
            stats = pool(stats, (e.probes, e.trace, e.probes * (rse * e.trace) ** 2))
        target = probe_rel_se(e) or args.tol
        # the mean from (b): the layer's best estimate, exact where (b) was
        total += probes_to_tol((stats[0], e.trace, stats[2]), target) * cost[e.name]
    return total


def route_counts(est: list[TraceEstimate]) -> str:
    """Layers per route, e.g. ``exact-ggn 12, hutchinson 9``."""
    counts = collections.Counter(e.method for e in est)
    return ", ".join(f"{m} {k}" for m, k in sorted(counts.items()))


def wci_rel_se(setup: Setup, est: list[TraceEstimate]) -> float | None:
    """WCI's relative SE from the library's delta method (SPEC: Weight-Curvature Index)."""
    params = dict(setup.net.named_parameters())
    norms = [float(params[e.name].detach().norm()) for e in est]
    wci, se = weight_curvature_index(norms, [e.trace for e in est], [e.se for e in est])
    return None if wci == 0 else se / wci


# ---------------------------------------------------------------------------------------
# one model


def warm_up(net: AuditedModel, x: torch.Tensor, y: torch.Tensor, cfg: ScanConfig) -> None:
    """One-off kernel and allocator costs, paid before anything is timed."""
    device = torch.device(cfg.device)
    attack_split(net, x[:2], y[:2], ScanConfig(eps=EPS, steps=1, device=cfg.device), device)
    with sdpa_kernel([SDPBackend.MATH]):
        setup = Setup("warm-up", net, layer_names(net.model)[:1], x[:2], y[:2], device, 2, 0.0)
        w = layer_weights(setup)
        name = setup.names[0]
        plain_probe(setup, w, name, group_probe(setup, tuple(w[name].shape), torch.Generator()))


def bench_model(
    key: str, args: argparse.Namespace, device: torch.device, log: Callable[[str], None]
) -> Result:
    spec = SPECS[key]
    net = build_model(spec, args.seed, device)
    splits = {
        "train": synthetic_split(args.train, spec.classes, args.seed),
        "test": synthetic_split(args.test, spec.classes, args.seed + 1),
    }
    cfg = ScanConfig(eps=EPS, steps=10, device=str(device), batch_size=args.batch_size)
    with eval_mode(net):
        warm_up(net, *splits["train"], cfg)
        x_adv, attack_s = attack_seconds(net, splits, cfg)
        log(f"{key}: attack {attack_s:.1f}s")
        n = args.hessian_samples
        setup = Setup(key, net, layer_names(net.model), x_adv[:n], splits["train"][1][:n],
                      device, args.batch_size, attack_s)  # fmt: skip
        est, trace_s = trace_seconds(setup, args, args.train)
        log(f"{key}: traces {trace_s:.1f}s ({route_counts(est)})")
        # the plain loop differentiates attention twice: SDPA's math kernel has a double backward
        with sdpa_kernel([SDPBackend.MATH]):
            plain_s = plain_seconds(setup, est, args)
        log(f"{key}: plain loop pilot done")
    result = Result(
        key, spec.classes, sum(p.numel() for p in net.parameters()), attack_s, trace_s, plain_s,
        route_counts(est), wci_rel_se(setup, est),
    )  # fmt: skip
    reasons = collections.Counter(e.route_reason for e in est if e.route_reason)
    result.notes += [f"{k} ({v} layers)" for k, v in reasons.items()]
    probes = sum(e.probes for e in est if isinstance(e.probes, int))
    worst = max(probe_rel_se(e) for e in est)
    flat = sum(e.trace <= 0 for e in est)
    result.notes.append(
        f"{probes} probes in all, max layer probe rel SE {worst:.3f}, "
        f"{flat}/{len(est)} layers with trace <= 0 (no WCI term)"
    )
    return result


# ---------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument
    add("--models", default=None, help=f"comma list of {', '.join(SPECS)} (default: all)")
    add("--train", type=int, default=256, help="train examples (attacked)")
    add("--test", type=int, default=256, help="test examples (attacked)")
    add("--hessian-samples", type=int, default=256, help="attacked train examples for traces")
    add("--batch-size", type=int, default=128, help="examples per forward pass")
    add("--tol", type=float, default=0.05, help="layer_traces' relative SE target per layer")
    add("--max-probes", type=int, default=200, help="layer_traces' probe cap per layer")
    add("--plain-probes", type=int, default=3, help="plain loop: timed probes per layer (>= 2)")
    add("--quick", action="store_true", help="smoke run on tiny sizes, < 60 s")
    add("--device", default="cpu", help="cpu (default) or cuda[:N]")
    add("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    add("--seed", type=int, default=0, help="seed of weights, data, attack and probes")
    args = p.parse_args(argv)
    if args.quick:  # one exact-route and one Hutchinson-route model, a handful of examples
        args.models = args.models or "resnet18-10,vit_tiny"
        args.train, args.test, args.hessian_samples, args.batch_size = 4, 4, 4, 4
        args.tol, args.max_probes, args.plain_probes = 0.5, 2, 2
    args.models = [m for m in (args.models or ",".join(SPECS)).split(",") if m]
    for m in args.models:
        if m not in SPECS:
            p.error(f"unknown model {m!r}; choose from {', '.join(SPECS)}")
    if not 1 <= args.hessian_samples <= args.train:
        p.error("--hessian-samples must be between 1 and --train")
    if min(args.train, args.test, args.batch_size) < 1 or args.plain_probes < 2:
        p.error("--train, --test and --batch-size >= 1, --plain-probes >= 2")
    return args


def print_header(args: argparse.Namespace, device: torch.device) -> None:
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print(
        f"torch {torch.__version__}, timm {timm.__version__}, wciaudit {wciaudit.__version__}, "
        f"python {platform.python_version()}"
    )
    print(f"device {device} ({where}), torch threads {torch.get_num_threads()}, TF32 off")
    print(
        f"train {args.train}, test {args.test}, hessian samples {args.hessian_samples}, "
        f"batch {args.batch_size}, input {'x'.join(map(str, IMAGE))}, PGD-10 eps 8/255, "
        f"tol {args.tol}, max probes {args.max_probes}, plain pilot {args.plain_probes} "
        f"probes/layer, seed {args.seed}"
    )


def print_results(results: list[Result]) -> None:
    head = ["model", "classes", "params", "attack s", "trace s", "trace/attack",
            "plain s (extrap.)", "speed-up", "WCI rel SE", "routes"]  # fmt: skip
    body = [
        [
            r.key,
            str(r.classes),
            f"{r.params / 1e6:.2f}M",
            f"{r.attack_s:.2f}",
            f"{r.trace_s:.2f}",
            f"{r.trace_s / r.attack_s:.2f}x",
            f"{r.plain_s:.1f}",
            f"{r.plain_s / r.trace_s:.1f}x",
            fmt(r.wci_rel_se, ".2g"),
            r.routes,
        ]  # fmt: skip
        for r in results
    ]
    print_plain(head, body)
    print()
    for r in results:
        print(f"  {r.key}: " + "; ".join(r.notes))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.script notices
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but no CUDA device is available")
    t_start = time.perf_counter()
    print_header(args, device)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    with no_tf32():
        results = [bench_model(key, args, device, log) for key in args.models]
    print()
    print(
        "Seconds: attack = PGD-10 on train + test; trace = layer_traces(auto) on the "
        "Hessian samples; plain = per-layer double-backward loop extrapolated to the "
        "per-layer relative SE the trace reached; speed-up = plain / trace"
    )
    print_results(results)
    print(f"\ntotal {time.perf_counter() - t_start:.0f}s")


if __name__ == "__main__":
    main()
