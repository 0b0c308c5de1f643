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
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from baselines import (
    group_probe,
    layer_weights,
    plain_pilot,
    plain_probe,
    plain_stop_rule,
    pyhessian_rows,
    shared_pilot,
)
from common import (
    MIN_PROBES,
    MODELS,
    TOL,
    PeakMemory,
    Row,
    Setup,
    Stats,
    Stopwatch,
    build_setup,
    dense_traces,
    engine_pilot,
    fixed_probe_traces,
    max_rel_err,
    measure_traces,
    pool,
    print_plain,
    print_rows,
    probes_to_tol,
    rel_spread,
    return_freed_memory,
    stats_of,
)
from torch.nn.attention import SDPBackend, sdpa_kernel

import wciaudit
from wciaudit.curvature import residual_vanishes
from wciaudit.curvature.objective import Objective
from wciaudit.model import eval_mode, no_tf32

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------
# one model


@dataclass
class Pilots:
    """Pilot runs of the engine, the plain per-layer loop and the shared probe."""

    engine: dict[str, Stats]
    engine_cost: dict[str, float]  # seconds per probe per layer
    graph_s: float  # the engine's fixed cost
    engine_mib: float
    plain: dict[str, list[float]]
    plain_cost: dict[str, float]
    plain_mib: float
    shared: dict[str, list[float]]
    shared_cost: float  # seconds per whole-model probe
    shared_mib: float


def run_pilots(setup: Setup, args: argparse.Namespace, w: dict, log: Log) -> Pilots:
    dev = setup.device
    g = torch.Generator().manual_seed(args.seed + 1)
    first = setup.names[0]
    plain_probe(setup, w, first, group_probe(setup, tuple(w[first].shape), g))  # warm-up
    p1, p2 = args.pilot_probes
    with PeakMemory(dev) as mem_engine:
        eng_values, eng_cost, graph_s, eng_total = engine_pilot(setup, p1, p2, args.seed)
    with PeakMemory(dev) as mem_plain:
        plain_values, plain_cost = plain_pilot(setup, w, args.plain_probes, g)
    log(
        f"  {setup.key}: engine pilot {eng_total:.1f}s, "
        f"plain pilot {sum(plain_cost.values()) * args.plain_probes:.1f}s"
    )
    with PeakMemory(dev) as mem_shared:
        shared_vals, shared_cost = shared_pilot(setup, w, args.shared_probes, g)
    return Pilots(
        eng_values,
        eng_cost,
        graph_s,
        mem_engine.mib,
        plain_values,
        plain_cost,
        mem_plain.mib,
        shared_vals,
        shared_cost,
        mem_shared.mib,
    )


def auto_row(setup: Setup, args: argparse.Namespace, log: Log) -> tuple[Row | None, float]:
    """``layer_traces(method="auto")``, run when every layer is exact (or ``--full``);
    returns its row (None when not run) and the seconds of the route check."""
    dev = setup.device
    with Stopwatch(dev) as check:
        exact_flags = residual_vanishes(
            Objective(setup.net, setup.x, setup.y, setup.names, setup.batch_size, dev), seed=0
        )
    n_exact = sum(exact_flags.values())
    row = None
    if n_exact == len(setup.names) or args.full:
        with PeakMemory(dev) as mem, Stopwatch(dev) as sw:
            est = measure_traces(setup, method="auto", seed=args.seed)
        values = {e.name: e.trace for e in est}
        rel = [e.rel_se or 0.0 for e in est if e.method == "hutchinson"]
        exact_layers = sum(e.method == "exact-ggn" for e in est)
        probes = "exact" if not rel else sum(e.probes for e in est if isinstance(e.probes, int))
        row = Row(
            setup.key,
            "wciaudit auto",
            sw.seconds,
            "measured",
            probes,
            max(rel) if rel else 0.0,
            max_rel_err(values, setup.exact),
            mem.mib,
            f"{exact_layers}/{len(est)} layers exact-ggn",
        )
        if setup.exact is None and exact_layers == len(est):
            setup.exact, setup.exact_label = values, "exact-ggn"
    log(
        f"  {setup.key}: route check {check.seconds:.1f}s, {n_exact}/{len(setup.names)} layers exact"
    )
    return row, check.seconds


def plain_row(
    setup: Setup, args: argparse.Namespace, w: dict, need: dict[str, float], pilots: Pilots
) -> Row:
    """The plain per-layer loop: the stop rule run for real (``full``) or extrapolated."""
    key, full = setup.key, args.full or setup.key in args.run_engine
    if not full:
        plain_s = sum(math.ceil(need[n]) * pilots.plain_cost[n] for n in setup.names)
        probes_5 = int(sum(math.ceil(v) for v in need.values()))
        return Row(
            key,
            "plain per-layer loop",
            plain_s,
            "extrapolated",
            probes_5,
            TOL,
            None,
            pilots.plain_mib,
            f"{args.plain_probes} timed probe(s)/layer",
        )
    with PeakMemory(setup.device) as mem, Stopwatch(setup.device) as sw:
        got = {
            n: plain_stop_rule(setup, w, n, args.seed + 2 + i, args.max_probes)
            for i, n in enumerate(setup.names)
        }
    means = {n: statistics.fmean(v) for n, v in got.items()}
    rses = [rel_spread(stats_of(v)) / math.sqrt(len(v)) for v in got.values()]
    return Row(
        key,
        "plain per-layer loop",
        sw.seconds,
        "measured",
        sum(len(v) for v in got.values()),
        max(rses),
        max_rel_err(means, setup.exact),
        mem.mib,
        "same stop rule",
    )


def engine_row(
    setup: Setup, args: argparse.Namespace, need: dict[str, float], pilots: Pilots
) -> Row:
    """The Hutchinson engine: the stop rule run for real (``full``) or extrapolated."""
    key, dev, full = setup.key, setup.device, args.full or setup.key in args.run_engine
    predicted = pilots.graph_s + sum(math.ceil(need[n]) * pilots.engine_cost[n] for n in need)
    if not full:
        p1, p2 = args.pilot_probes
        probes_5 = int(sum(math.ceil(v) for v in need.values()))
        return Row(
            key,
            "wciaudit hutchinson",
            predicted,
            "extrapolated",
            probes_5,
            TOL,
            None,
            pilots.engine_mib,
            f"pilots {p1}+{p2} probes/layer",
        )
    with PeakMemory(dev) as mem, Stopwatch(dev) as sw:
        est = measure_traces(setup, method="hutchinson", seed=args.seed, max_probes=args.max_probes)
    return Row(
        key,
        "wciaudit hutchinson",
        sw.seconds,
        "measured",
        sum(e.probes for e in est),
        max(e.rel_se for e in est),
        max_rel_err({e.name: e.trace for e in est}, setup.exact),
        mem.mib,
        f"extrapolation said {predicted:.1f}s",
    )


def bench_model(setup: Setup, args: argparse.Namespace, log: Log) -> tuple[list[Row], dict]:
    """Every row of one model, and the extras printed below the table."""
    names = setup.names
    w = layer_weights(setup)
    first, check_s = auto_row(setup, args, log)
    rows = [] if first is None else [first]
    pilots = run_pilots(setup, args, w, log)
    # restricted probes of the engine and of the plain loop sample the same distribution
    # (v^T H_kk v, v Rademacher on block k): pool them for the variance
    pooled = {
        n: pool(pilots.engine[n], stats_of(pilots.plain[n]))
        if len(pilots.plain[n]) > 1
        else pilots.engine[n]
        for n in names
    }
    need = {n: probes_to_tol(pooled[n]) for n in names}
    pilot_means = {n: pooled[n][1] for n in names}
    extra: dict = {
        "spread_restricted": [rel_spread(pooled[n]) for n in names],
        "spread_shared": [rel_spread(stats_of(pilots.shared[n])) for n in names],
        "pilot_sum": sum(pilot_means.values()),
    }
    rows.append(plain_row(setup, args, w, need, pilots))
    plain_s = rows[-1].seconds
    rows.append(engine_row(setup, args, need, pilots))
    if first is None:  # auto = route check + the engine everywhere
        probes_5 = int(sum(math.ceil(v) for v in need.values()))
        rows.append(
            Row(
                setup.key,
                "wciaudit auto",
                check_s + rows[-1].seconds,
                rows[-1].how,
                probes_5,
                TOL,
                None,
                rows[-1].peak_mib,
                "no layer exact: route check + hutchinson",
            )
        )
    # plain shared (whole-model probe): every layer needs the worst layer's probes
    shared_need = max(probes_to_tol(stats_of(v)) for v in pilots.shared.values())
    n_shared = int(math.ceil(shared_need))
    rows.append(
        Row(
            setup.key,
            "plain shared probe",
            shared_need * pilots.shared_cost,
            "extrapolated",
            n_shared,
            TOL,
            None,
            pilots.shared_mib,
            f"{args.shared_probes} timed probes; {n_shared} probes x {len(names)} layers read",
        )
    )
    # PyHessian (whole-model total only)
    extra["exact_sum"] = None if setup.exact is None else sum(setup.exact.values())
    rows.extend(pyhessian_rows(setup, args.pyhessian_probes, args.seed, extra))
    extra["pilot_err"] = max_rel_err(pilot_means, setup.exact)
    for r in rows:
        r.speedup = plain_s / r.seconds if r.seconds > 0 else None
    return rows, extra


# ---------------------------------------------------------------------------------------
# scaling with samples and probes


def _timed_traces(setup: Setup, method: str, seed: int, probes: int | None) -> tuple[float, float]:
    """Best of two ``layer_traces`` runs (the machine may be shared): seconds, peak MiB."""
    secs = math.inf
    for _ in range(2):
        with PeakMemory(setup.device) as mem, Stopwatch(setup.device) as sw:
            if probes is None:
                measure_traces(setup, method=method, seed=seed)
            else:
                fixed_probe_traces(setup, probes, seed)
        secs = min(secs, sw.seconds)
    return secs, mem.mib


def scaling_rows(
    key: str, args: argparse.Namespace, splits: wciaudit.Splits, device: torch.device, log: Log
) -> list[tuple]:
    out = []
    first = True
    for n in args.sizes:
        setup = build_setup(key, n, min(n, args.batch_size), splits, device)
        for method, probes in (
            ("auto", None),
            ("hutchinson", args.scale_probes),
            ("hutchinson", 2 * args.scale_probes),
        ):
            if first:  # warm-up: first calls pay one-off kernel and import costs
                # a tolerance no estimate meets: two probes per layer, then the cap
                measure_traces(
                    setup, method=method, seed=args.seed, tol=1e-12, min_probes=2, max_probes=2
                )
            secs, mib = _timed_traces(setup, method, args.seed, probes)
            label = "auto (exact)" if probes is None else f"hutchinson {probes}/layer"
            out.append((key, n, label, secs, mib))
        first = False
        log(f"  scaling: {key} n={n} done")
    return out


# ---------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument
    add("--models", default="tiny,cnn,resnet,vit", help="comma list of tiny, cnn, resnet, vit")
    add(
        "--hessian-samples",
        type=int,
        default=128,
        help="adversarial examples the Hessian is taken over",
    )
    add(
        "--batch-size",
        type=int,
        default=128,
        help="examples per graph (one graph: the engine reuses it)",
    )
    add("--sizes", default="128,256,512", help="sample counts for the scaling table ('' to skip)")
    add("--scale-model", default="cnn", help="model of the scaling table")
    add(
        "--scale-probes",
        type=int,
        default=10,
        help="probes per layer in the scaling table (and twice that)",
    )
    add(
        "--pilot-probes",
        default="2,8",
        help="engine pilots: P1,P2 probes per layer (P1 < P2 <= 32)",
    )
    add("--plain-probes", type=int, default=1, help="plain loop pilot: timed probes per layer")
    add("--shared-probes", type=int, default=10, help="whole-model shared-probe pilot: probes")
    add("--pyhessian-probes", type=int, default=20, help="PyHessian trace(maxIter=...)")
    add("--max-probes", type=int, default=200, help="probe cap of the real stop rules (--full)")
    add("--run-engine", default="", help="models on which every stop rule runs for real")
    add("--full", action="store_true", help="run every stop rule for real on every model (slow)")
    add("--quick", action="store_true", help="smoke run, < 60 s")
    add("--device", default="cpu", help="cpu (default) or cuda[:N]")
    add("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    add("--seed", type=int, default=0)
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


def print_header(args: argparse.Namespace, device: torch.device) -> None:
    try:
        import pyhessian  # noqa: F401

        ph = "installed"
    except ImportError:
        ph = "not installed"
    print(
        f"torch {torch.__version__}, wciaudit {wciaudit.__version__}, "
        f"python {platform.python_version()}"
    )
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print(
        f"device {device} ({where}), torch threads {torch.get_num_threads()}, "
        f"TF32 off, pyhessian {ph}"
    )
    print(
        f"hessian samples {args.hessian_samples}, batch {args.batch_size}, tol {TOL}, "
        f"min probes {MIN_PROBES}, attack PGD-10 eps 0.1 (model in eval mode)"
    )


def dense_row(setup: Setup) -> Row:
    """The dense float64 Hessian of ``tiny``; it becomes the model's exact reference."""
    t0 = time.perf_counter()
    setup.exact, setup.exact_label = dense_traces(setup), "dense"
    return Row(
        setup.key,
        "exact dense (torch.func.hessian)",
        time.perf_counter() - t0,
        "measured",
        "exact",
        0.0,
        0.0,
        None,
        "float64, ground truth",
    )


def run_models(
    args: argparse.Namespace, splits: wciaudit.Splits, device: torch.device, log: Log
) -> tuple[list[Row], dict[str, dict]]:
    all_rows: list[Row] = []
    extras: dict[str, dict] = {}
    for key in args.models:
        log(f"{key}: load + attack")
        setup = build_setup(key, args.hessian_samples, args.batch_size, splits, device)
        with eval_mode(setup.net):
            dense = dense_row(setup) if key == "tiny" else None
            rows, extra = bench_model(setup, args, log)
        if dense is not None:
            plain = next(r for r in rows if r.method == "plain per-layer loop")
            dense.speedup = plain.seconds / dense.seconds
            rows.insert(0, dense)
        extra["exact_label"], extra["attack_s"] = setup.exact_label, setup.attack_s
        extras[key] = extra
        all_rows += rows
    return all_rows, extras


def print_report(
    args: argparse.Namespace, rows: list[Row], extras: dict[str, dict], scale: list[tuple]
) -> None:
    print()
    print(
        "Time to 5% relative SE on every layer (or exact); "
        "speed-up = plain per-layer seconds / seconds"
    )
    if rows:
        print_rows(rows)
    print()
    print(
        "Per-probe relative spread sd/|mean| per layer (median, max): "
        "block-restricted vs whole-model shared probe"
    )
    for key, e in extras.items():
        r, s = e["spread_restricted"], e["spread_shared"]
        print(
            f"  {key:7s} restricted {statistics.median(r):6.2f} {max(r):7.2f}   "
            f"shared {statistics.median(s):7.2f} {max(s):8.2f}"
        )
    print()
    for key, e in extras.items():
        ref = f"exact reference: {e['exact_label']}" if e["exact_label"] else "no exact reference"
        pilot = "" if e["pilot_err"] is None else f", pilot means max err {e['pilot_err']:.2e}"
        print(f"  {key}: attack {e['attack_s']:.1f}s; {ref}{pilot}")
        if "pyhessian" in e:
            print(f"    pyhessian: {e['pyhessian']}")
    if scale:
        print()
        print(f"Scaling on {args.scale_model}: seconds grow linearly with samples and probes")
        head = ["model", "samples", "method", "seconds", "ms / sample", "peak MiB"]
        body = [
            [k, str(n), m, f"{s:.2f}", f"{1000 * s / n:.2f}", f"{mem:.0f}"]
            for k, n, m, s, mem in scale
        ]
        print_plain(head, body)


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

    print_header(args, device)
    splits = wciaudit.load_data("sample")
    # timm's ViT uses fused scaled_dot_product_attention, whose CPU kernel has no double
    # backward; the math kernel is the same function built from differentiable ops
    with no_tf32(), sdpa_kernel([SDPBackend.MATH]):
        rows, extras = run_models(args, splits, device, log)
        scale = scaling_rows(args.scale_model, args, splits, device, log) if args.sizes else []
    print_report(args, rows, extras, scale)
    print(f"\ntotal {time.perf_counter() - t_start:.0f}s")


if __name__ == "__main__":
    main()
