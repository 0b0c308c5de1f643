"""Clean/robust figures and the robust gap against direct computations (SPEC: robust
metrics, robust gap): per-example values equal cross-entropy and argmax taken one example
at a time, whatever the batch size; the SEs are the textbook ones for a mean and a
proportion, and a gap's SE is the root of the summed squares of two independent SEs."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wciaudit.metrics import SplitFigures, per_example, robust_gap, split_figures


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 4)).eval()


def _data(n: int = 23) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 2, 3, generator=g), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("batch_size", [1, 5, 23, 64])
def test_per_example_values_equal_one_example_at_a_time(batch_size: int) -> None:
    net, (x, y) = _net(), _data()
    losses, correct = per_example(net, x, y, batch_size, torch.device("cpu"))
    assert losses.dtype == correct.dtype == torch.float64 and losses.shape == (23,)
    with torch.no_grad():
        for i in range(23):
            z = net(x[i : i + 1])
            assert float(losses[i]) == pytest.approx(float(F.cross_entropy(z, y[i : i + 1])))
            assert bool(correct[i]) == bool(z.argmax(1) == y[i])


def test_per_example_runs_in_the_models_dtype() -> None:
    net, (x, y) = _net().double(), _data()
    seen = []
    net.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    per_example(net, x, y, 10, torch.device("cpu"))
    assert seen == [torch.float64] * 3  # float32 data cast per batch: 10 + 10 + 3


def test_split_figures_are_the_mean_and_the_textbook_standard_errors() -> None:
    losses = torch.tensor([0.2, 1.5, 0.7, 3.1, 0.05], dtype=torch.float64)
    correct = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    f = split_figures(losses, correct)
    values = losses.tolist()
    assert f.n == 5 and f.acc == pytest.approx(0.6) and f.loss == pytest.approx(sum(values) / 5)
    assert f.loss_se == pytest.approx(statistics.stdev(values) / math.sqrt(5))  # n - 1
    assert f.acc_se == pytest.approx(math.sqrt(0.6 * 0.4 / 5))


def test_one_example_has_no_loss_se_and_a_certain_accuracy_has_se_zero() -> None:
    f = split_figures(torch.tensor([0.3], dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    assert math.isnan(f.loss_se) and f.acc == 1.0 and f.acc_se == 0.0


def test_robust_gap_signs_and_independent_split_errors() -> None:
    train = SplitFigures(acc=0.8, loss=0.4, acc_se=0.03, loss_se=0.05, n=100)
    test = SplitFigures(acc=0.6, loss=0.9, acc_se=0.04, loss_se=0.12, n=80)
    gap = robust_gap(train, test)
    # a model that generalises worse has a larger test loss and a lower test accuracy:
    # both gaps are positive
    assert gap["gap_loss"] == pytest.approx(0.5) and gap["gap_err"] == pytest.approx(0.2)
    assert gap["gap_loss_se"] == pytest.approx(0.13)  # sqrt(0.05^2 + 0.12^2)
    assert gap["gap_err_se"] == pytest.approx(0.05)  # sqrt(0.03^2 + 0.04^2)
