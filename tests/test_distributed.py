"""Two gloo processes on the CPU give the figures of one process (SPEC scale: torchrun)."""

from __future__ import annotations

import importlib
import json
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cli_runner import child_env
from torch import nn

from wciaudit import Splits, distributed, scan
from wciaudit.attacks import run_attack
from wciaudit.attacks.autoattack import AutoAttackSettings
from wciaudit.distributed import Shard, choose_device
from wciaudit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(
    eps=0.1,
    steps=3,
    seed=2,
    hessian_samples=45,
    dtype="float64",
    batch_size=16,
    max_probes=60,
    masking_samples=0,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 10), nn.GELU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)
    )


def _splits() -> Splits:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(70, 1, 4, 4, generator=g), torch.arange(70) % 3
    return Splits(
        name="toy",
        x_train=x[:41],
        y_train=y[:41],
        x_test=x[41:],
        y_test=y[41:],
        num_classes=3,
        source="generated",
        n_train_total=41,
        n_test_total=29,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: AutoAttack's stages at a test's size (the original: 100 APGD steps, 9 targets, 5000
#: queries, 100 FAB steps); the composition and the per-example seeding are what is tested
SMALL_AUTOATTACK = dict(
    budget=AutoAttackSettings(apgd_steps=10, n_target_classes=2, n_queries=40, fab_steps=10)
)


def _small_autoattack() -> None:
    """Every run_attack of a scan (the attack and the attack-spread re-attack) at the
    test's size; in this process only."""
    small = partial(run_attack, **SMALL_AUTOATTACK)
    for module in ("wciaudit.pipeline.attack", "wciaudit.pipeline.measure"):
        importlib.import_module(module).run_attack = small


CNN = ROOT / "sample_models" / "digits_cnn.safetensors"
#: the sample CNN on 40 + 40 digits at eps 0.1: APGD-CE and APGD-T both break examples
AUTOATTACK_SETTINGS = dict(
    SETTINGS,
    arch=str(ROOT / "sample_models" / "digits_cnn.py"),
    train_samples=40,
    test_samples=40,
    hessian_samples=20,
    attack="autoattack",
)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """One of the two processes: the toy scan, then the AutoAttack scan of the sample CNN,
    each sharded over both; rank 0 writes ``toy.json`` and ``autoattack.json`` in ``out``.
    Both scans share one start of the processes (each start imports torch and wciaudit)."""
    torch.set_num_threads(1)  # two processes on two cores: more threads only contend
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        shard = Shard(rank=rank, world=world)
        toy = scan(_model(), _splits(), shard=shard, **SETTINGS)
        _small_autoattack()  # after the toy scan, which keeps the default attack
        autoattack = scan(CNN, "sample", shard=shard, **AUTOATTACK_SETTINGS)
        if rank == 0:
            Path(out, "toy.json").write_text(toy.to_json())
            Path(out, "autoattack.json").write_text(autoattack.to_json())
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The results of rank 0 of two gloo processes: {"toy": ..., "autoattack": ...}."""
    out = tmp_path_factory.mktemp("two_processes")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return {name: json.loads((out / f"{name}.json").read_text()) for name in ("toy", "autoattack")}


def _comparable(d: dict) -> dict:
    d = dict(d)
    d.pop("timings")
    d["config"] = {k: v for k, v in d["config"].items() if k != "processes"}
    return d


def _close(a: object, b: object, path: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        # same examples and probes; only the order of float64 additions differs
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


@pytest.mark.slow
def test_two_gloo_processes_match_one(two_processes: dict[str, dict]) -> None:
    single = json.loads(scan(_model(), _splits(), **SETTINGS).to_json())
    double = two_processes["toy"]
    assert double["config"]["processes"] == 2
    assert {la["method"] for la in double["layers"]} == {"hutchinson", "exact-ggn"}
    _close(_comparable(single), _comparable(double))


def test_autoattack_in_two_gloo_processes_matches_one(
    two_processes: dict[str, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """AutoAttack's every stage is seeded by the example's global index, so two shards
    give the one process's figures: robust accuracy, what broke each example, APGD-CE's
    own figure and the traces at its points."""
    small = partial(run_attack, **SMALL_AUTOATTACK)
    for module in ("wciaudit.pipeline.attack", "wciaudit.pipeline.measure"):
        monkeypatch.setattr(importlib.import_module(module), "run_attack", small)
    single = json.loads(scan(CNN, "sample", **AUTOATTACK_SETTINGS).to_json())
    double = two_processes["autoattack"]
    assert double["config"]["processes"] == 2
    attacks = single["attacks"]
    assert list(attacks["robust_acc"]) == ["autoattack", "apgd-ce"]
    # APGD-CE and APGD-T break examples, and some survive into FAB-T and Square
    assert (
        attacks["broken_by"]["test"]["apgd-ce"] > 0 and attacks["broken_by"]["test"]["apgd-t"] > 0
    )
    assert attacks["robust_acc"]["autoattack"]["test"] > 0
    _close(_comparable(single), _comparable(double))


def test_shard_bounds_cover_everything_once() -> None:
    for n in (0, 1, 7, 100):
        for world in (1, 2, 3, 8):
            spans = [Shard(rank=r, world=world).bounds(n) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))


@pytest.mark.parametrize(
    ("spec", "local_rank", "count", "expected"),
    [
        ("cpu", 1, 4, "cpu"),  # --device cpu on a GPU host stays on the CPU (gloo)
        ("auto", 1, 0, "cpu"),
        ("auto", 1, 4, "cuda:1"),
        ("cuda", 2, 4, "cuda:2"),
        ("cuda", 3, 1, "cuda:0"),  # per-task CUDA_VISIBLE_DEVICES: one device each
        ("cuda:1", 0, 2, "cuda:1"),  # an explicit index is kept
    ],
)
def test_the_device_under_torchrun(spec: str, local_rank: int, count: int, expected: str) -> None:
    assert choose_device(spec, local_rank, count) == torch.device(expected)


@pytest.mark.parametrize(
    ("spec", "local_rank", "count", "words"),
    [
        ("cuda", 0, 0, "sees no CUDA device"),
        ("cuda:2", 0, 2, "does not exist"),
        ("cuda", 2, 2, "LOCAL_RANK 2"),
        ("tpu", 0, 1, "device must be"),
    ],
)
def test_impossible_devices_under_torchrun(
    spec: str, local_rank: int, count: int, words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        choose_device(spec, local_rank, count)


class _FakeDist:
    """What shard_from_env and leave ask of torch.distributed, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def init_process_group(self, **kwargs: object) -> None:
        self.calls.append(("init", kwargs))

    def get_rank(self) -> int:
        return 1

    def get_world_size(self) -> int:
        return 2

    def barrier(self) -> None:
        self.calls.append(("barrier", {}))

    def destroy_process_group(self) -> None:
        self.calls.append(("destroy", {}))


def test_joining_uses_the_asked_device_and_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeDist()
    fake.is_initialized = lambda: False  # type: ignore[method-assign]
    monkeypatch.setattr(distributed, "dist", fake)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    shard = distributed.shard_from_env("cpu", timeout_s=42)
    assert (shard.rank, shard.world, shard.device) == (1, 2, torch.device("cpu"))
    ((what, kwargs),) = fake.calls
    assert what == "init" and kwargs["backend"] == "gloo"
    assert kwargs["timeout"].total_seconds() == 42


def test_a_failed_process_leaves_without_a_barrier(monkeypatch: pytest.MonkeyPatch) -> None:
    # its peers may wait in an all-reduce; a barrier would meet it out of step and hang
    fake = _FakeDist()
    monkeypatch.setattr(distributed, "dist", fake)
    distributed.leave(Shard(rank=1, world=2), failed=True)
    assert fake.calls == []
    distributed.leave(Shard(rank=1, world=2))
    assert [c[0] for c in fake.calls] == ["barrier", "destroy"]


@pytest.mark.slow
def test_torchrun_cli(sample_cnn_scan, tmp_path: Path) -> None:  # noqa: ANN001
    """The real launcher: torchrun with 2 CPU processes, only rank 0 writes; one process
    is the shared scan of the sample CNN, run with the same arguments."""
    one = sample_cnn_scan.proc
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
            "-m",
            "wciaudit",
            *sample_cnn_scan.args,
            "--distributed",
            "--json",
            "two.json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a = sample_cnn_scan.result()
    b = json.loads((tmp_path / "two.json").read_text())
    assert a["config"]["processes"] == 1 and b["config"]["processes"] == 2
    for key in ("robust_acc_train", "robust_acc_test", "clean_acc_test"):
        assert a["metrics"][key] == b["metrics"][key]
    for la, lb in zip(a["layers"], b["layers"], strict=True):
        assert la["trace"] == pytest.approx(lb["trace"], rel=1e-4)  # float32 sums in another order
    assert [p.name for p in tmp_path.iterdir()] == ["two.json"]
