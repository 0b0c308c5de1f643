"""How much a scan's WCI moves from seed to seed, beside the SE it reports.

For each ``--hessian-samples`` n, the scan runs over S seeds on one fixed data split
(loaded once, as are the weights) and prints: mean WCI, the seed-to-seed sd, the median
reported SE, their ratio (about 1 when the SE covers what the seed moves: the Hessian
subset, the attack's random starts and the probes), the median of each SE part, and
the same for one layer's trace (the layer with the largest WCI term).

    python scripts/seed_spread.py sample_models/digits_resnet_pgd.safetensors \\
        --hessian-samples 200 1000 --seeds 8
"""

from __future__ import annotations

import argparse
import statistics
import time

from wciaudit import scan
from wciaudit.checkpoints import load_checkpoint
from wciaudit.data import load_data

PARTS = ("probes", "hessian-subset", "attack-starts")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--arch", default=None, help="architecture file or name, as for scan --arch")
    p.add_argument("--data", default="sample")
    p.add_argument("--hessian-samples", type=int, nargs="+", default=[200, 1000])
    p.add_argument("--seeds", type=int, default=8, help="seeds 0 .. S-1 (after --first-seed)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--eps", default=None, help="default: the checkpoint's metadata")
    p.add_argument("--train-samples", type=int, default=None, help="fixed train split size")
    p.add_argument(
        "--test-samples",
        type=int,
        default=None,
        help="fixed test split size (WCI does not depend on it; fewer is faster)",
    )
    p.add_argument("--masking-samples", type=int, default=0)
    p.add_argument("--no-attack-spread", action="store_true")
    p.add_argument("--device", default="cpu")
    return p.parse_args()


def _row(n: int, results: list, seconds: float) -> list[str]:
    wci = [r.wci for r in results]
    se = [r.wci_se for r in results]
    sd = statistics.stdev(wci) if len(wci) > 1 else float("nan")
    k = max(range(len(results[0].layers)), key=lambda i: results[0].layers[i].wci_term)
    trace = [r.layers[k].trace for r in results]
    trace_se = [r.layers[k].trace_se for r in results]
    trace_sd = statistics.stdev(trace) if len(trace) > 1 else float("nan")
    parts = [
        statistics.median((r.wci_se_parts or {}).get(p) or 0.0 for r in results) for p in PARTS
    ]
    return [
        str(n),
        str(len(results)),
        f"{statistics.fmean(wci):.2f}",
        f"{sd:.2f}",
        f"{statistics.median(se):.2f}",
        f"{sd / statistics.median(se):.2f}" if statistics.median(se) > 0 else "inf",
        *(f"{p:.2f}" for p in parts),
        results[0].layers[k].name,
        f"{trace_sd / statistics.median(trace_se):.2f}"
        if statistics.median(trace_se) > 0
        else "inf",
        f"{seconds / len(results):.1f}",
        f"{statistics.median(r.timings.attack_s for r in results):.1f}",
        f"{statistics.median(r.timings.trace_s for r in results):.1f}",
    ]


def main() -> None:
    args = _args()
    loaded = load_checkpoint(args.checkpoint, arch=args.arch)
    splits = load_data(
        args.data,
        data_config=loaded.data_config,
        train_samples=args.train_samples,
        test_samples=args.test_samples,
        seed=0,
    )
    settings = dict(
        masking_samples=args.masking_samples,
        attack_spread=not args.no_attack_spread,
        device=args.device,
    )
    if args.eps is not None:
        settings["eps"] = args.eps
    head = [
        "n",
        "seeds",
        "mean WCI",
        "sd",
        "median SE",
        "sd/SE",
        "probes",
        "subset",
        "attack",
        "layer",
        "trace sd/SE",
        "s/scan",
        "attack s",
        "trace s",
    ]
    rows = []
    for n in args.hessian_samples:
        t0 = time.perf_counter()
        results = [
            scan(loaded, splits, hessian_samples=n, seed=s, **settings)
            for s in range(args.first_seed, args.first_seed + args.seeds)
        ]
        rows.append(_row(n, results, time.perf_counter() - t0))
        wcis = ", ".join(f"{r.wci:.1f} +- {r.wci_se:.1f}" for r in results)
        print(f"n={n}: WCI +- SE by seed {wcis}", flush=True)
    print(
        f"{args.checkpoint}: train {splits.x_train.shape[0]}, test {splits.x_test.shape[0]}, "
        f"SE parts are medians over seeds"
    )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
