"""Is WCI's SE calibrated? Many seeds of each model and route, side by side.

For each row the same model and data are scanned with ``wciaudit.scan`` at seeds
0 .. S-1, nothing else changed; the seed moves the Hessian subset, the attack's random
starts, the groups, the probes and the sampled labels, which is what the SE claims to
cover (SPEC: What an SE covers). Printed per row:

- ``sd/SE``: the sd of WCI over seeds / the median reported SE, with a 95 % interval
  from the chi-square law of the sample variance ((S-1) s^2 / sigma^2 ~ chi2(S-1));
- ``z sd``: the sd of z = (WCI - mean WCI) / own SE, which weighs each scan's SE;
- ``flip``: how often a gate at the mean WCI fails, i.e. WCI - mean > 2 SE
  (a calibrated SE fails about 2.3 % of seeds);
- ``cover``: where the exact WCI is known (eps 0, the whole split: only probes or
  sampled labels move it), how often |WCI - exact| <= 2 SE, and for Hutchinson the
  same per (seed, layer) with the exact trace from a dense float64 Hessian.

Rows: a custom exact-route CNN with and without BatchNorm, Hessian subset at
f = n/N = 0.2 and 0.8; the shipped digits ResNet at 200 and 1000 Hessian samples; a
GELU MLP on Hutchinson (``--tol 0.5``: the first look, one probe per group, alone;
``--tol 0.05``: the WCI rounds); a 100-class MLP on the sampled-label route.

    python benchmarks/calibration.py                 # every row, 40 seeds
    python benchmarks/calibration.py --quick         # 12 seeds, the small rows only
    python benchmarks/calibration.py --rows cnn-f0.2,gelu-look --seeds 80
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from scipy import stats
from torch import nn

from wciaudit import scan
from wciaudit.checkpoints import load_checkpoint
from wciaudit.data import Splits, load_data

ROOT = Path(__file__).resolve().parents[1]
RESNET = ROOT / "sample_models" / "digits_resnet_pgd.safetensors"


# ---------------------------------------------------------------------------------------
# models, trained for a few seconds, seeded


def _train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,))
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def digits(train: int | None = None) -> Splits:
    return load_data("sample", train_samples=train, test_samples=20, seed=0)


def cnn(splits: Splits, batchnorm: bool) -> nn.Module:
    """Conv-[BN]-ReLU-Conv-ReLU-Pool-Linear, as a new user would write it."""
    torch.manual_seed(1)
    bn: list[nn.Module] = [nn.BatchNorm2d(8)] if batchnorm else []
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        *bn,
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )
    return _train(net, splits.x_train, splits.y_train, 150, 1)


def gelu_mlp(splits: Splits) -> nn.Module:
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 24), nn.GELU(), nn.Linear(24, 24), nn.GELU(), nn.Linear(24, 10)
    )
    return _train(net, splits.x_train, splits.y_train, 150, 2)


def many_classes(classes: int = 100, per_class: int = 6) -> tuple[nn.Module, Splits]:
    """A ReLU MLP on Gaussian clusters with ``classes`` classes (sampled-label route)."""
    g = torch.Generator().manual_seed(3)
    centres = torch.rand(classes, 32, generator=g)
    y = torch.arange(classes).repeat_interleave(per_class + 1)
    x = (centres[y] + 0.15 * torch.randn(y.shape[0], 32, generator=g)).clamp(0, 1)
    test = torch.arange(y.shape[0]) % (per_class + 1) == 0
    splits = Splits(
        "clusters",
        x[~test],
        y[~test],
        x[test][:20],
        y[test][:20],
        classes,
        "synthetic Gaussian clusters",
        int((~test).sum()),
        20,
    )
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, classes))
    return _train(net, splits.x_train, splits.y_train, 200, 3), splits


def exact_traces(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Tr(H_kk) of the mean CE at (x, y) per weight layer, from the dense float64 Hessian."""
    net64 = _double(net)
    params = {n: p.detach() for n, p in net64.named_parameters()}
    out = {}
    for name, w in params.items():
        if not name.endswith("weight") or w.dim() < 2:
            continue

        def loss(wk: torch.Tensor, name: str = name) -> torch.Tensor:
            logits = torch.func.functional_call(net64, {**params, name: wk}, (x.double(),))
            return nn.functional.cross_entropy(logits, y)

        h = torch.func.hessian(loss)(w).reshape(w.numel(), w.numel())
        out[name] = float(h.diagonal().sum())
    return out


def _double(net: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(net).double().eval()


# ---------------------------------------------------------------------------------------
# rows


@dataclass
class Row:
    name: str
    what: str
    model: Callable[[], tuple[object, Splits]]
    settings: dict
    exact: Callable[[object, Splits], dict[str, float]] | None = None
    norms: dict[str, float] = field(default_factory=dict)


def _rows() -> list[Row]:
    def cnn_row(bn: bool) -> Callable[[], tuple[object, Splits]]:
        def make() -> tuple[object, Splits]:
            s = digits(500)
            return cnn(s, bn), s

        return make

    def resnet() -> tuple[object, Splits]:
        return load_checkpoint(RESNET), digits()

    def gelu() -> tuple[object, Splits]:
        s = digits(200)
        return gelu_mlp(s), s

    def hutch_exact(net: object, s: Splits) -> dict[str, float]:
        return exact_traces(net, s.x_train, s.y_train)  # type: ignore[arg-type]

    pgd = dict(eps=0.1, steps=5)
    exact = dict(curvature="auto", **pgd)
    rows = []
    for bn in (False, True):
        for f in (0.2, 0.8):
            tag = "cnn-bn" if bn else "cnn"
            rows.append(
                Row(
                    f"{tag}-f{f}",
                    f"CNN{' +BN' if bn else ''} exact, {int(500 * f)} of 500",
                    cnn_row(bn),
                    dict(hessian_samples=int(500 * f), **exact),
                )
            )
    for n in (200, 1000):
        rows.append(
            Row(f"resnet-{n}", f"digits ResNet exact, {n} of 1257", resnet, dict(hessian_samples=n))
        )
    hutch = dict(eps=0.0, curvature="hutchinson", hessian_samples=200)
    rows.append(
        Row(
            "gelu-look",
            "GELU MLP Hutchinson, first look",
            gelu,
            dict(tol=0.5, **hutch),
            hutch_exact,
        )
    )
    rows.append(
        Row(
            "gelu-rounds",
            "GELU MLP Hutchinson, WCI rounds",
            gelu,
            dict(tol=0.05, **hutch),
            hutch_exact,
        )
    )
    rows.append(
        Row(
            "mc-ggn",
            "100-class MLP sampled labels, 300 of 600",
            many_classes,
            dict(curvature="mc-ggn", hessian_samples=300, **pgd),
        )
    )
    return rows


# ---------------------------------------------------------------------------------------
# statistics


def sd_ratio_interval(sd: float, se: float, seeds: int) -> tuple[float, float]:
    """95 % interval of sd/SE from (S-1) s^2 / sigma^2 ~ chi2(S-1)."""
    k = seeds - 1
    lo = sd * math.sqrt(k / stats.chi2.ppf(0.975, k)) / se
    hi = sd * math.sqrt(k / stats.chi2.ppf(0.025, k)) / se
    return lo, hi


def summarise(row: Row, results: list, exact: dict[str, float] | None) -> dict:
    wci = [r.wci for r in results]
    se = [r.wci_se for r in results]
    mean = statistics.fmean(wci)
    sd = statistics.stdev(wci)
    med = statistics.median(se)
    z = [(w - mean) / s if s > 0 else math.inf for w, s in zip(wci, se, strict=True)]
    out = {
        "row": row.name,
        "seeds": len(results),
        "wci": mean,
        "sd": sd,
        "median_se": med,
        "ratio": sd / med if med > 0 else math.inf,
        "interval": sd_ratio_interval(sd, med, len(results)) if med > 0 else (math.inf,) * 2,
        "z_sd": statistics.pstdev(z) if all(map(math.isfinite, z)) else math.inf,
        "flip": sum(w - mean > 2 * s for w, s in zip(wci, se, strict=True)) / len(results),
        "cover": None,
        "layer_cover": None,
    }
    if exact is not None:
        layers = results[0].layers
        exact_wci = math.fsum(la.frob_norm * math.sqrt(max(exact[la.name], 0.0)) for la in layers)
        out["exact_wci"] = exact_wci
        out["cover"] = sum(abs(r.wci - exact_wci) <= 2 * r.wci_se for r in results) / len(results)
        pairs = [(la, exact[la.name]) for r in results for la in r.layers]
        out["layer_cover"] = sum(abs(la.trace - t) <= 2 * la.trace_se for la, t in pairs) / len(
            pairs
        )
        zl = [(la.trace - t) / la.trace_se for la, t in pairs if la.trace_se > 0]
        out["layer_z_sd"] = statistics.pstdev(zl)
        out["layer_z_mean"] = statistics.fmean(zl)
    return out


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


HEAD = (
    "| row | seeds | mean WCI | sd | median SE | sd/SE [95 %] | z sd | flip | cover | layer cover |"
)


def table_line(r: dict) -> str:
    lo, hi = r["interval"]
    return (
        f"| {r['row']} | {r['seeds']} | {r['wci']:.2f} | {r['sd']:.3f} | {r['median_se']:.3f} "
        f"| {r['ratio']:.2f} [{lo:.2f}, {hi:.2f}] | {r['z_sd']:.2f} | {r['flip']:.1%} "
        f"| {_fmt(r['cover'], '.1%')} | {_fmt(r['layer_cover'], '.1%')} |"
    )


def print_table(rows: list[dict]) -> None:
    print(HEAD)
    print("|---" * (HEAD.count("|") - 1) + "|")
    for r in rows:
        print(table_line(r))
    pooled = [z for r in rows for z in r.get("_z", [])]
    if pooled:
        print(f"pooled z sd over {len(pooled)} scans: {statistics.pstdev(pooled):.2f}")


def run_row(row: Row, seeds: int, verbose: bool) -> dict:
    model, splits = row.model()
    exact = row.exact(model, splits) if row.exact is not None else None
    results = []
    t0 = time.perf_counter()
    for s in range(seeds):
        results.append(scan(model, splits, seed=s, masking_samples=0, device="cpu", **row.settings))
    summary = summarise(row, results, exact)
    mean = summary["wci"]
    summary["_z"] = [(r.wci - mean) / r.wci_se for r in results if r.wci_se > 0]
    summary["seconds"] = time.perf_counter() - t0
    if verbose:
        print(
            f"  {row.name}: {row.what}; {seeds} seeds in {summary['seconds']:.0f} s; "
            f"layer z sd {_fmt(summary.get('layer_z_sd'))}, "
            f"layer z mean {_fmt(summary.get('layer_z_mean'))}\n  {table_line(summary)}",
            flush=True,
        )
    return summary


QUICK = ("cnn-f0.2", "cnn-bn-f0.8", "gelu-look", "gelu-rounds", "mc-ggn")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=None, help="seeds per row (default 40)")
    parser.add_argument("--quick", action="store_true", help="12 seeds, the small rows only")
    parser.add_argument("--rows", default=None, help="comma-separated row names")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = args.seeds or (12 if args.quick else 40)
    rows = _rows()
    wanted = args.rows.split(",") if args.rows else (QUICK if args.quick else None)
    if wanted is not None:
        rows = [r for r in rows if r.name in wanted]
    summaries = [run_row(r, seeds, verbose=True) for r in rows]
    print_table(summaries)


if __name__ == "__main__":
    main()
