"""The masking checks run again on fewer examples after an out-of-memory error."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from wciaudit import ScanConfig, Splits
from wciaudit.distributed import Shard
from wciaudit.pipeline.run import ScanRun

scan_module = importlib.import_module("wciaudit.pipeline.attack")  # the attack stage


def _splits() -> Splits:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 4, 4, generator=g), torch.arange(40) % 2
    return Splits(
        name="toy",
        x_train=x[:20],
        y_train=y[:20],
        x_test=x[20:],
        y_test=y[20:],
        num_classes=2,
        source="generated",
        n_train_total=20,
        n_test_total=20,
    )


def test_masking_checks_retry_on_fewer_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    real = scan_module.masking_checks
    sizes: list[int] = []

    def masking(*args, n: int, **kwargs):  # noqa: ANN002, ANN003
        sizes.append(n)
        if n > 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return real(*args, n=n, **kwargs)

    monkeypatch.setattr(scan_module, "masking_checks", masking)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    run = ScanRun.create(ScanConfig(eps=0.1, steps=2, masking_samples=20), Shard(), None)
    report = scan_module.masking(run, net, _splits())
    assert sizes == [20, 10, 5]
    assert report["n"] == 5
    assert run.notes[:2] == [
        "masking checks: out of memory on 20 examples; ran on 10 (CUDA out of memory. "
        "Tried to allocate 1 GiB)",
        "masking checks: out of memory on 10 examples; ran on 5 (CUDA out of memory. "
        "Tried to allocate 1 GiB)",
    ]
