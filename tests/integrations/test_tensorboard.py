"""WCIMonitor writes to TensorBoard with the real package: a log folder it opens (and
closes) itself, or a SummaryWriter it is given (and leaves open)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wciaudit import WCIMonitor

pytest.importorskip("tensorboard", reason="the tensorboard package is not installed")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

SCALARS = ("wci", "wci_se", "loss_adv", "acc_adv", "sum_frob_sq", "sum_trace")


def _net_and_batch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(0)
    return net, torch.rand(16, 1, 4, 4, generator=g), torch.randint(0, 3, (16,), generator=g)


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_a_log_folder(tmp_path):
    net, x, y = _net_and_batch()
    with WCIMonitor(net, x, y, every=2, eps=0.1, steps=2, tensorboard=tmp_path / "tb") as m:
        for _ in range(4):
            m.step()
    got = _scalars(tmp_path / "tb")
    assert set(got) == {f"wciaudit/{k}" for k in SCALARS}
    assert [s for s, _ in got["wciaudit/wci"]] == [1, 3]
    for key in SCALARS:
        values = [v for _, v in got[f"wciaudit/{key}"]]
        assert values == pytest.approx([getattr(r, key) for r in m.records], rel=1e-6), key


def test_a_writer_given_is_left_open(tmp_path):
    net, x, y = _net_and_batch()
    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    with WCIMonitor(net, x, y, eps=0.1, steps=2, tensorboard=writer, tag="run") as m:
        record = m.measure(5)
    writer.add_scalar("after", 1.0, 0)  # still open after the monitor closed
    writer.close()
    got = _scalars(tmp_path / "tb")
    assert got["run/wci"] == [(5, pytest.approx(record.wci, rel=1e-6))]
    assert got["after"] == [(0, 1.0)]
