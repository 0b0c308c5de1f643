"""The README's sample scan on an idle and on a busy CPU, under each thread setting.

Runs ``wciaudit scan sample_models/digits_resnet_pgd.safetensors --eps 0.1`` as a child
process, first with nothing else running, then beside competing torch processes that
this script starts itself (each a matmul loop on ``--competitor-threads`` threads), and
prints a table of wall seconds with each setting's ratio to the best setting in the
same machine state. The settings:

- ``default``: wciaudit's thread policy (:mod:`wciaudit.threads`), nothing set;
- ``--threads 1``;
- ``--threads C`` (C: the CPUs this process may use), OMP_WAIT_POLICY=PASSIVE (the
  policy once set it with more than one thread; these rows are why it no longer does);
- ``--threads C``, OMP_WAIT_POLICY=ACTIVE (spinning threads);
- ``--threads C``, OpenMP's own wait policy: torch's default before the policy existed
  (OMP_WAIT_POLICY is set empty, which OpenMP ignores with a warning on stderr).

OMP_NUM_THREADS and OMP_WAIT_POLICY of this shell are removed from the children's
environment, so that the policy sees the machine. The target (issue "fast on a busy
machine"): with one competing job the default within 1.3x of the best setting, and idle
no slower than torch's default. Timings from a shared machine are noisy: run it on a
machine with nothing else running, and repeat (``--repeats``) to see the spread.

Usage:
    python benchmarks/busy.py                       # 1 competitor, 2 threads each
    python benchmarks/busy.py --competitors 3 --repeats 2
    python benchmarks/busy.py --settings default,threads-1 --states busy
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCAN = ["scan", "sample_models/digits_resnet_pgd.safetensors", "--eps", "0.1", "-q"]

COMPETITOR = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(512, 512)
while True:
    b = a @ a
"""


def settings(cores: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (extra scan arguments, extra environment)."""
    many = ["--threads", str(cores)]
    return {
        "default": ([], {}),
        "threads-1": (["--threads", "1"], {}),
        f"threads-{cores}-passive": (many, {"OMP_WAIT_POLICY": "PASSIVE"}),
        f"threads-{cores}-active": (many, {"OMP_WAIT_POLICY": "ACTIVE"}),
        f"threads-{cores}-omp-default": (many, {"OMP_WAIT_POLICY": ""}),
    }


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_scan(args: list[str], extra: dict[str, str], folder: Path) -> tuple[float, dict]:
    """Wall seconds of one scan and the thread policy its JSON records."""
    target = folder / "busy.wciaudit.json"
    command = [sys.executable, "-m", "wciaudit", *SCAN, *args, "--json", str(target)]
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=child_env(extra), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"scan failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return seconds, json.loads(target.read_text())["config"].get("thread_policy", {})


def start_competitors(count: int, threads: int) -> list[subprocess.Popen]:
    env = child_env({})
    command = [sys.executable, "-c", COMPETITOR, str(threads)]
    return [subprocess.Popen(command, env=env) for _ in range(count)]


def stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        p.terminate()
    for p in processes:
        p.wait(timeout=30)


def measure(state: str, chosen: dict, args: argparse.Namespace, folder: Path) -> list[dict]:
    rows = []
    for name, (extra_args, extra_env) in chosen.items():
        runs = [run_scan(extra_args, extra_env, folder) for _ in range(args.repeats)]
        seconds = [s for s, _ in runs]
        policy = runs[-1][1]
        rows.append(
            {
                "state": state,
                "setting": name,
                "seconds": seconds,
                "median": statistics.median(seconds),
                "threads": policy.get("threads"),
                "why": policy.get("reason", ""),
            }
        )
        print(f"  {state:5} {name:28} {' '.join(f'{s:.1f}' for s in seconds)} s", flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    print()
    print("| machine | setting | seconds | ratio to best | threads | why |")
    print("|---|---|---|---|---|---|")
    for state in dict.fromkeys(r["state"] for r in rows):
        mine = [r for r in rows if r["state"] == state]
        best = min(r["median"] for r in mine)
        for r in mine:
            seconds = ", ".join(f"{s:.1f}" for s in r["seconds"])
            print(
                f"| {state} | {r['setting']} | {seconds} | {r['median'] / best:.2f}x "
                f"| {r['threads']} | {r['why']} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--competitors", type=int, default=1, help="competing torch processes")
    parser.add_argument("--competitor-threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="scans per setting and state")
    parser.add_argument("--settings", default="", help="comma-separated names (default: all)")
    parser.add_argument("--states", default="idle,busy", help="idle, busy or both")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds the competitors run first"
    )
    args = parser.parse_args()
    # SIGTERM (a timeout) unwinds like Ctrl-C, so that the competitors and the running
    # scan are stopped rather than left running
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    every = settings(cores or 1)
    wanted = [s for s in args.settings.split(",") if s]
    chosen = {k: v for k, v in every.items() if not wanted or k in wanted}
    print(f"{cores} usable CPUs; load average now {os.getloadavg()[0]:.2f}", flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "idle" in args.states:
            rows += measure("idle", chosen, args, folder)
        if "busy" in args.states:
            competitors = start_competitors(args.competitors, args.competitor_threads)
            try:
                time.sleep(args.warmup)
                state = f"busy ({args.competitors}x{args.competitor_threads}-thread matmul)"
                rows += measure(state, chosen, args, folder)
            finally:
                stop(competitors)
    print_table(rows)


if __name__ == "__main__":
    main()
