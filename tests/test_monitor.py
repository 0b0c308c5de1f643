"""WCIMonitor only observes (mode, weights, .grad, RNG, whole seeded runs); WCILRAdjuster's rule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wciaudit import WCIMonitor, bounds, scan
from wciaudit.errors import ConfigError
from wciaudit.monitor import WCILRAdjuster


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models: one thread is faster and gives the same bits on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Net(nn.Module):
    """ReLU conv net with BatchNorm and dropout, so that mode flags matter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(F.relu(self.bn(self.conv(x))).flatten(1)))


def _data(seed: int = 0, n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _train(monitor_every: int | None, epochs: int = 3) -> tuple[dict[str, torch.Tensor], list]:
    """A seeded loop that draws from torch's global RNG (dropout, randperm)."""
    torch.manual_seed(0)
    net = Net()
    x, y = _data()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    monitor = None
    if monitor_every is not None:
        monitor = WCIMonitor(net, x[:16], y[:16], every=monitor_every, eps=0.1, steps=2)
    for epoch in range(epochs):
        net.train()
        for idx in torch.randperm(x.shape[0]).split(16):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            if monitor is not None:  # mid-step, with .grad populated: the worst place
                monitor.step(epoch)
            opt.step()
    return {k: v.clone() for k, v in net.state_dict().items()}, (monitor.records if monitor else [])


def test_same_seed_same_run_with_and_without_monitor():
    without, _ = _train(None)
    with_, records = _train(1)
    assert len(records) == 9
    for k in without:
        assert torch.equal(without[k], with_[k]), k


def test_measure_preserves_mode_grads_weights_and_rng():
    torch.manual_seed(1)
    net = Net()
    x, y = _data()
    net.train()
    net.bn.eval()  # a mixed state that a blanket model.train() would not restore
    F.cross_entropy(net(x), y).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [m.training for m in net.modules()]
    rng = torch.get_rng_state()
    monitor = WCIMonitor(net, x, y, eps=0.1, steps=2)
    with torch.no_grad():  # the monitor must work inside no_grad too
        record = monitor.measure(7)
    assert record.step == 7 and record.wci > 0
    assert [m.training for m in net.modules()] == flags
    assert torch.equal(torch.get_rng_state(), rng)
    assert (
        torch.is_grad_enabled()
    )  # the no_grad block above has ended; enable_grad inside was local
    for n, p in net.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k  # BatchNorm running stats untouched too


def test_grad_none_stays_none():
    net = Net()
    x, y = _data()
    WCIMonitor(net, x, y, eps=0.1, steps=2).measure()
    assert all(p.grad is None for p in net.parameters())


def test_wci_matches_a_scan_of_the_same_weights():
    """At eps = 0 the monitor and a scan take the Hessian on the same examples; the
    exact route on a ReLU net makes both exact, so their WCIs agree."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x, y = _data(n=32)
    rec = WCIMonitor(net, x, y, eps=0.0, steps=2).measure()
    from wciaudit.data import Splits

    splits = Splits(
        name="t",
        x_train=x,
        y_train=y,
        x_test=None,
        y_test=None,
        num_classes=3,
        source="test",
        n_train_total=32,
        n_test_total=None,
    )
    result = scan(net, splits, eps=0.0, steps=2, hessian_samples=32, masking_samples=0)
    assert math.isclose(rec.wci, result.wci, rel_tol=1e-5)
    frobs = [la.frob_norm for la in result.layers]
    assert math.isclose(rec.sum_frob_sq, sum(f * f for f in frobs), rel_tol=1e-9)
    assert rec.wci == pytest.approx(sum(rec.terms.values()))
    assert set(rec.methods.values()) == {"exact-ggn"}
    assert math.isclose(
        rec.wci,
        bounds.weight_curvature_index(frobs, [la.trace for la in result.layers], [0.0] * 2)[0],
        rel_tol=1e-5,
    )


def test_every_and_csv(tmp_path):
    net = Net()
    x, y = _data()
    path = tmp_path / "wci.csv"
    monitor = WCIMonitor(net, x[:8], y[:8], every=3, eps=0.1, steps=1, csv_path=path)
    got = [monitor.step() for _ in range(7)]
    assert [r is not None for r in got] == [False, False, True, False, False, True, False]
    assert [r.step for r in monitor.records] == [2, 5]
    lines = path.read_text().splitlines()
    assert lines[0].startswith("step,wci,wci_se,") and "term:conv.weight" in lines[0]
    assert len(lines) == 3


def test_tensorboard_writer_object_and_missing_package(monkeypatch):
    class Writer:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

    net = Net()
    x, y = _data()
    w = Writer()
    WCIMonitor(net, x[:8], y[:8], eps=0.1, steps=1, tensorboard=w, tag="m").measure(4)
    assert ("m/wci", pytest.approx(w.scalars[0][1]), 4) == w.scalars[0]
    import builtins

    real_import = builtins.__import__

    def no_tb(name, *a, **k):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    with pytest.raises(ConfigError, match="tensorboard"):
        WCIMonitor(net, x, y, tensorboard="runs/x")


def test_bad_arguments():
    net = Net()
    x, y = _data()
    with pytest.raises(ConfigError):
        WCIMonitor(net, x, y[:3])
    with pytest.raises(ConfigError):
        WCIMonitor(net, x, y, every=0)
    with pytest.raises(ConfigError):
        WCIMonitor(nn.ReLU(), x, y)


def test_lr_adjuster_rule():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    adj = WCILRAdjuster(opt, threshold=1.5, factor=0.5, cooldown=1, min_lr=0.2)
    cuts = [adj.step(w) for w in (10, 8, 11, 12.5, 13, 20, 31, 100)]
    # ref 10 -> 8; 12.5 > 1.5*8 cuts (ref 12.5); 13 cooldown; 20 > 18.75 cuts; 31 cooldown;
    # 100 > 1.5*20 cuts but lr floors at 0.2
    assert cuts == [False, False, False, True, False, True, False, True]
    assert adj.cuts == [3, 5, 7]
    assert opt.param_groups[0]["lr"] == 0.2
    state = adj.state_dict()
    other = WCILRAdjuster(opt, threshold=1.5)
    other.load_state_dict(state)
    assert other.state_dict() == state
    warm = WCILRAdjuster(opt, threshold=1.5, warmup=2)
    assert [warm.step(w) for w in (1, 100, 10, 16)] == [False, False, False, True]  # ref set at 10
    with pytest.raises(ConfigError):
        WCILRAdjuster(opt, threshold=1.0)
    with pytest.raises(ConfigError):
        WCILRAdjuster(opt, factor=1.0)
