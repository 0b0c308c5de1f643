"""WCIMonitor's SE covers what moves its figure: the held batch as a sample of the
training data, the attack's random starts and the probes (``batch_wci_se``).

Over many batches drawn from one population, each with its own seed, the sd of the
monitor's WCI agrees with the median SE it reports, within the chi-square interval of
an sd over that many batches (99.9 %, widened by 10 % for the median SE's own noise).
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from scipy import stats
from torch import nn

from wciaudit.monitor import WCIMonitor

BATCHES = 60
BATCH = 64


def _window(k: int, slack: float = 1.1) -> tuple[float, float]:
    return (
        math.sqrt(stats.chi2.ppf(0.0005, k) / k) / slack,
        math.sqrt(stats.chi2.ppf(0.9995, k) / k) * slack,
    )


def _population() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2000, 10, generator=g)
    y = (x[:, :3].argmax(1) + (torch.rand(2000, generator=g) < 0.2).long()) % 3
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    return net, x, y


@pytest.mark.slow
def test_monitor_se_covers_the_batch_and_the_attack() -> None:
    """On the exact route (Hutchinson's SE goes through the same code, with its probes
    inside the group spread)."""
    net, x, y = _population()
    wci, se = [], []
    for b in range(BATCHES):
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(b))[:BATCH]
        monitor = WCIMonitor(net, x[idx], y[idx], eps=0.05, seed=b, curvature="ggn")
        record = monitor.measure()
        wci.append(record.wci)
        se.append(record.wci_se)
    assert min(se) > 0
    lo, hi = _window(BATCHES - 1)
    ratio = statistics.stdev(wci) / statistics.median(se)
    assert lo <= ratio <= hi, (ratio, (lo, hi))


def test_monitor_se_is_not_zero_on_the_exact_route() -> None:
    net, x, y = _population()
    record = WCIMonitor(net, x[:64], y[:64], eps=0.05, curvature="ggn").measure()
    assert record.methods and set(record.methods.values()) == {"exact-ggn"}
    assert record.wci > 0 and 0 < record.wci_se < record.wci
