"""Smoke checks of the GPU path: one line per check, ending in ``ok`` or ``FAIL``.

    python benchmarks/gpu_smoke.py --device cpu    # under 5 minutes on 2 CPU cores
    python benchmarks/gpu_smoke.py --device cuda   # under 10 minutes on one GPU

Exit status 1 when any check fails. The checks, in order:

- the estimators on the device against dense float64 Hessians (``torch.func.hessian``
  on the CPU) of tiny models: exact Gauss-Newton (to 1e-8), sampled labels and
  Hutchinson (within 4 SE), Hutch++ on a float32 model (within 4 SE);
- one graph at a time: no batch's autograd graph is alive when the next batch's
  forward pass starts (saved-tensor hooks; both devices);
- peak memory of Hutchinson with the examples in 1 and in 4 batches
  (``torch.cuda.max_memory_allocated``; skipped on the CPU, which has no allocator
  peak: the check above stands in);
- the out-of-memory retry under a capped memory fraction
  (``torch.cuda.set_per_process_memory_fraction``; CUDA only);
- the sample scan on the CPU and on the device: the same route per layer and WCI
  within 3 combined SEs; two runs on the device: the same figures, or the largest
  relative difference is printed (on ``--device cpu`` the device is the CPU);
- a timing line: PGD against the traces for timm's resnet18 with 1000 classes at
  32 px (random weights, nothing downloaded).

Nothing here downloads anything; TF32 is off (the library's entry points switch it
off). ``--only NAME[,NAME]`` runs some checks (names as printed, before the colon).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wciaudit import ScanConfig, scan  # noqa: E402
from wciaudit.attacks import attack_split  # noqa: E402
from wciaudit.curvature import (  # noqa: E402
    Objective,
    ggn_traces,
    hutchinson_traces,
    layer_traces,
    mc_ggn_traces,
)
from wciaudit.curvature.hutchpp import hutchpp_traces  # noqa: E402
from wciaudit.retry import run_with_batch_retry  # noqa: E402

CNN = ROOT / "sample_models" / "digits_cnn.safetensors"
CNN_ARCH = ROOT / "sample_models" / "digits_cnn.py"


@dataclass
class Outcome:
    """A check's verdict and its one-line detail."""

    ok: bool
    detail: str


class Skipped(Exception):
    """A check that cannot run on this device (printed as skipped, counted as ok)."""


# ---------------------------------------------------------------------------------------
# tiny models and their dense float64 references


def tiny_cnn() -> nn.Module:
    """Conv, eval-mode BatchNorm, ReLU, max-pool: the exact route applies to every layer."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).double()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def tiny_mlp() -> nn.Module:
    """A Tanh MLP: smooth, so only Hutchinson (and Hutch++) apply."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)
    ).double()


def tiny_data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


def layer_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2]


def dense_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str) -> float:
    """Tr of the diagonal Hessian block of the mean cross-entropy, dense, float64, CPU."""
    model = copy.deepcopy(model).double().cpu()
    params = dict(model.named_parameters())

    def loss(w: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, {**params, name: w}, (x.double(),))
        return nn.functional.cross_entropy(out, y)

    w = params[name].detach()
    block = torch.func.hessian(loss)(w).reshape(w.numel(), w.numel())
    return float(block.trace().detach())


def _objective(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch: int
) -> Objective:
    model = copy.deepcopy(model).to(device)
    dtype = next(model.parameters()).dtype
    return Objective(model, x.to(dtype), y, layer_names(model), batch, device)


def _within(estimates, exact: dict[str, float], sds: float) -> Outcome:  # noqa: ANN001
    """Every estimate within ``sds`` of its SE (plus float rounding) of the exact trace."""
    worst = 0.0
    for e in estimates:
        slack = sds * e.se + 1e-4 * abs(exact[e.name])
        worst = max(worst, abs(e.trace - exact[e.name]) / max(slack, 1e-300))
    return Outcome(worst <= 1.0, f"worst |error| / ({sds} SE) = {worst:.2f}")


# ---------------------------------------------------------------------------------------
# the checks


def check_exact_ggn(device: torch.device) -> Outcome:
    model, (x, y) = tiny_cnn(), tiny_data()
    exact = {n: dense_trace(model, x, y, n) for n in layer_names(model)}
    got = ggn_traces(_objective(model, x, y, device, 8), memory_bytes=2**29, seed=0)
    worst = max(abs(e.trace - exact[e.name]) / abs(exact[e.name]) for e in got)
    return Outcome(worst <= 1e-8, f"max relative error {worst:.1e} (float64, limit 1e-8)")


def check_mc_ggn(device: torch.device) -> Outcome:
    model, (x, y) = tiny_cnn(), tiny_data()
    exact = {n: dense_trace(model, x, y, n) for n in layer_names(model)}
    got = mc_ggn_traces(
        _objective(model, x, y, device, 8),
        k_labels=4,
        tol=0.05,
        max_labels=200,
        seed=0,
        memory_bytes=2**29,
    )
    return _within(got, exact, 4)


def check_hutchinson(device: torch.device) -> Outcome:
    model, (x, y) = tiny_mlp(), tiny_data()
    exact = {n: dense_trace(model, x, y, n) for n in layer_names(model)}
    got = hutchinson_traces(
        _objective(model, x, y, device, 8), tol=0.05, max_probes=200, min_probes=10, seed=0
    )
    return _within(got, exact, 4)


def check_hutchpp_float32(device: torch.device) -> Outcome:
    model, (x, y) = tiny_mlp(), tiny_data()
    exact = {n: dense_trace(model, x, y, n) for n in layer_names(model)}
    single = copy.deepcopy(model).float()
    got = hutchpp_traces(
        _objective(single, x, y, device, 24),
        sketch=4,
        tol=1e-9,
        min_probes=40,
        max_probes=40,
        seed=0,
    )
    return _within(got, exact, 4)


class _Box:
    def __init__(self, tensor: torch.Tensor, forward: int) -> None:
        self.tensor, self.forward = tensor, forward


def stale_graphs(model: nn.Module, run: Callable[[], object]) -> list[int]:
    """At each forward pass of ``model`` during ``run``, the saved tensors of earlier
    passes still alive (a saved tensor lives as long as its graph)."""
    live: weakref.WeakSet[_Box] = weakref.WeakSet()
    count = [0]
    stale: list[int] = []

    def pre(_module: nn.Module, _inputs: tuple) -> None:
        count[0] += 1
        stale.append(sum(1 for b in live if b.forward < count[0]))

    def pack(t: torch.Tensor) -> _Box:
        box = _Box(t.detach(), count[0])  # detached: an output would hold its own graph
        live.add(box)
        return box

    handle = model.register_forward_pre_hook(pre)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
            run()
    finally:
        handle.remove()
    return stale


def check_one_graph(device: torch.device) -> Outcome:
    model, (x, y) = tiny_mlp(), tiny_data()
    obj = _objective(model, x, y, device, 6)
    stale = stale_graphs(
        obj.model, lambda: hutchinson_traces(obj, max_probes=4, min_probes=2, tol=0.05, seed=0)
    )
    return Outcome(max(stale) == 0, f"saved tensors of earlier batches alive: max {max(stale)}")


def resnet18_1000(device: torch.device) -> nn.Module:
    """timm's resnet18 with 1000 classes, random weights from seed 0, on ``device``."""
    import timm

    torch.manual_seed(0)  # timm initialises from the global generator
    return timm.create_model("resnet18", pretrained=False, num_classes=1000).to(device).eval()


def images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 1000, (n,), generator=g)


def _peak_mib(device: torch.device, run: Callable[[], object]) -> float:
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - start) / 2**20


def check_peak_memory(device: torch.device) -> Outcome:
    if device.type != "cuda":
        raise Skipped("no allocator peak on the CPU; the one-graph check stands in")
    net = resnet18_1000(device)
    x, y = images(256)
    # the first layer: its double backward runs through the whole network, so the
    # graph (activations) dominates the peak, not the probes or the weights
    names = ["layer1.0.conv1.weight"]

    def run(batch: int) -> Callable[[], object]:
        obj = Objective(net, x, y, names, batch, device)
        return lambda: hutchinson_traces(
            obj, probes=2, groups=1, tol=0.05, max_probes=200, min_probes=10, seed=0
        )

    one, four = _peak_mib(device, run(256)), _peak_mib(device, run(64))
    # one graph of a quarter of the examples at a time; two graphs alive (the bug this
    # guards against) would give about half
    return Outcome(
        four <= 0.45 * one,
        f"1 batch {one:.0f} MiB, 4 batches {four:.0f} MiB (ratio {four / one:.2f}, limit 0.45)",
    )


def check_oom_retry(device: torch.device) -> Outcome:
    if device.type != "cuda":
        raise Skipped("needs a CUDA allocator to cap")
    net = resnet18_1000(device)
    x, y = images(512)
    names = ["layer1.0.conv1.weight"]

    def traces(batch: int) -> object:
        return layer_traces(
            Objective(net, x, y, names, batch, device),
            ScanConfig(curvature="hutchinson", min_probes=2, max_probes=2),
        )

    # the cap: twice what batch 64 takes above the model, so 512 cannot fit
    need = _peak_mib(device, lambda: traces(64)) * 2**20
    retries: list[tuple[int, int]] = []
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.empty_cache()
    cap = torch.cuda.memory_allocated(device) + 2 * need
    torch.cuda.set_per_process_memory_fraction(min(cap / total, 1.0), device)
    try:
        _est, size = run_with_batch_retry(
            traces, 512, on_retry=lambda a, b, _m: retries.append((a, b))
        )
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
    return Outcome(
        bool(retries) and size < 512,
        f"cap {cap / 2**20:.0f} MiB: ran at batch {size} after {len(retries)} retries",
    )


def sample_scan(device: torch.device) -> dict:
    """The shipped digits CNN on the shipped digits data, small enough for a CPU."""
    result = scan(
        str(CNN), "sample", arch=str(CNN_ARCH), train_samples=64, test_samples=64,
        hessian_samples=64, steps=5, eps=0.1, seed=0, masking_samples=0, device=str(device),
    )  # fmt: skip
    return {
        "wci": result.wci,
        "wci_se": result.wci_se,
        "routes": [layer.method for layer in result.layers],
        "traces": [layer.trace for layer in result.layers],
        "robust_acc_test": result.metrics.robust_acc_test,
    }


def check_scans(device: torch.device) -> list[tuple[str, Outcome]]:
    """CPU against the device (same routes, WCI within 3 combined SEs), and the device
    twice (the same figures, or the largest relative difference)."""
    cpu = sample_scan(torch.device("cpu"))
    first = cpu if device.type == "cpu" else sample_scan(device)
    second = sample_scan(device)
    se = math.hypot(cpu["wci_se"], first["wci_se"])
    gap = abs(cpu["wci"] - first["wci"])
    agree = cpu["routes"] == first["routes"] and gap <= 3 * se
    versus = Outcome(
        agree,
        f"WCI {cpu['wci']:.4g} (cpu) vs {first['wci']:.4g} ({device}), |diff| = "
        f"{gap / se if se else math.inf:.2f} SE; routes {'equal' if cpu['routes'] == first['routes'] else 'differ'}",
    )
    figures = [first["wci"], first["robust_acc_test"], *first["traces"]]
    again = [second["wci"], second["robust_acc_test"], *second["traces"]]
    diff = max(abs(a - b) / max(abs(a), 1e-300) for a, b in zip(figures, again, strict=True))
    repeat = Outcome(
        diff <= 1e-6 or abs(first["wci"] - second["wci"]) <= first["wci_se"],
        "identical" if diff == 0 else f"largest relative difference {diff:.1e} (within SE)",
    )
    return [("scan cpu vs device", versus), ("scan twice on device", repeat)]


def check_timing(device: torch.device) -> Outcome:
    """PGD and the traces of resnet18 (1000 classes, 32 px) on ``device``, in seconds."""
    n, steps = (256, 10) if device.type == "cuda" else (16, 3)
    net = resnet18_1000(device)
    x, y = images(n, seed=1)
    cfg = ScanConfig(eps=8 / 255, steps=steps, seed=0, batch_size=128, device=str(device))
    names = layer_names(net)
    t0 = time.perf_counter()
    adv = attack_split(net, x, y, cfg, device)
    _sync(device)
    attack_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    est = layer_traces(
        Objective(net, adv, y, names, 128, device), ScanConfig(tol=0.1, max_probes=20)
    )
    _sync(device)
    trace_s = time.perf_counter() - t0
    routes = sorted({e.method for e in est})
    return Outcome(
        math.isfinite(attack_s + trace_s) and all(math.isfinite(e.trace) for e in est),
        f"n={n}: PGD-{steps} {attack_s:.1f} s, traces {trace_s:.1f} s ({', '.join(routes)})",
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CHECKS: dict[str, Callable[[torch.device], Outcome]] = {
    "exact-ggn vs dense": check_exact_ggn,
    "mc-ggn vs dense": check_mc_ggn,
    "hutchinson vs dense": check_hutchinson,
    "hutch++ float32 vs dense": check_hutchpp_float32,
    "one graph at a time": check_one_graph,
    "peak memory 1 vs 4 batches": check_peak_memory,
    "oom retry under a cap": check_oom_retry,
    "timing resnet18 C=1000 32px": check_timing,
}


def run_checks(device: torch.device, only: set[str] | None = None) -> list[tuple[str, Outcome]]:
    """Every check (or those in ``only``), each line printed as it finishes."""
    results: list[tuple[str, Outcome]] = []

    def report(name: str, outcome: Outcome) -> None:
        results.append((name, outcome))
        print(f"{name}: {outcome.detail} {'ok' if outcome.ok else 'FAIL'}", flush=True)

    for name, check in CHECKS.items():
        if only is not None and name not in only:
            continue
        try:
            report(name, check(device))
        except Skipped as why:
            report(name, Outcome(True, f"skipped on {device.type}: {why}"))
        except Exception as exc:  # a check that raises has failed; the others still run
            report(name, Outcome(False, f"raised {type(exc).__name__}: {exc}".splitlines()[0]))
    if only is None or "scan" in only:
        try:
            for name, outcome in check_scans(device):
                report(name, outcome)
        except Exception as exc:
            report("scan", Outcome(False, f"raised {type(exc).__name__}: {exc}".splitlines()[0]))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--only", help="comma-separated check names (and 'scan')")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    only = None if args.only is None else {s.strip() for s in args.only.split(",")}
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# gpu_smoke on {label}, torch {torch.__version__}", flush=True)
    t0 = time.perf_counter()
    results = run_checks(device, only)
    failed = [name for name, o in results if not o.ok]
    print(f"# {len(results)} checks, {len(failed)} failed, {time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
