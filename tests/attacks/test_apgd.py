"""APGD-CE and APGD-T against torchattacks' APGD and APGDT on the same model and examples.

torchattacks is a test-only reference (installed with --no-deps; it pins an old requests).
The two implementations draw different random starts, so they agree in distribution, not
example by example: the paired test below allows |b - c| <= 3 sqrt(b + c) discordant
examples (b: broken by ours only, c: by theirs only), the normal approximation to a
sign test on the discordant pairs at about 3 sigma.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wciaudit.attacks.apgd import apgd_ce, apgd_targeted, dlr_targeted_loss

torchattacks = pytest.importorskip("torchattacks")

NORMS = [("linf", 0.1, "Linf"), ("l2", 0.5, "L2")]


def _robust(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x).argmax(1) == y


def _agree(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    b = int((~ours & theirs).sum())
    c = int((ours & ~theirs).sum())
    assert abs(b - c) <= 3 * math.sqrt(max(b + c, 1)), (
        ours.float().mean(),
        theirs.float().mean(),
        b,
        c,
    )


@pytest.mark.parametrize(("norm", "eps", "their_norm"), NORMS)
def test_apgd_ce_matches_torchattacks(digits_cnn, digits_test, norm, eps, their_norm) -> None:
    x, y = digits_test
    clean = _robust(digits_cnn, x, y)
    out = apgd_ce(digits_cnn, x, y, eps=eps, norm=norm, steps=100, seed=0)
    ours = clean & ~out.broken
    ref = torchattacks.APGD(digits_cnn, norm=their_norm, eps=eps, steps=100, seed=0, loss="ce")
    theirs = _robust(digits_cnn, ref(x, y), y)
    _agree(ours, theirs)
    # not a vacuous comparison: the attack breaks some examples and leaves some
    assert 0 < ours.sum() < clean.sum()
    # the returned points are in the ball, and x_adv shows every break
    d = (out.x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all() and out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert torch.equal(_robust(digits_cnn, out.x_adv, y), ~out.broken)


@pytest.mark.parametrize(("norm", "eps", "their_norm"), NORMS)
def test_apgd_t_matches_torchattacks(digits_cnn, digits_test, norm, eps, their_norm) -> None:
    x, y = digits_test
    clean = _robust(digits_cnn, x, y)
    # 3 target classes on both sides keeps the test fast; torchattacks takes C - 1 targets
    x_adv, broken = apgd_targeted(digits_cnn, x, y, eps=eps, norm=norm, n_target_classes=3)
    ours = clean & ~broken
    ref = torchattacks.APGDT(digits_cnn, norm=their_norm, eps=eps, steps=100, seed=0, n_classes=4)
    theirs = _robust(digits_cnn, ref(x, y), y)
    _agree(ours, theirs)
    assert 0 < ours.sum() < clean.sum()
    assert torch.equal(_robust(digits_cnn, x_adv, y), ~broken)


def test_apgd_is_at_least_as_strong_as_pgd_10(digits_cnn, digits_test) -> None:
    from wciaudit.attacks.pgd import pgd_attack
    from wciaudit.config import ScanConfig

    x, y = digits_test
    pgd = pgd_attack(digits_cnn, x, y, ScanConfig(eps=0.1, steps=10))
    apgd = apgd_ce(digits_cnn, x, y, eps=0.1, norm="linf")
    b = int((pgd.correct & apgd.broken).sum())  # APGD breaks, PGD does not
    c = int((~pgd.correct & ~apgd.broken).sum())
    assert b - c >= -3 * math.sqrt(max(b + c, 1))
    # the highest-loss points beat PGD's on average
    assert apgd.loss.mean() >= pgd.loss.mean()


def test_results_do_not_depend_on_the_batch_or_the_subset() -> None:
    torch.manual_seed(0)
    net = (
        nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5)).double().eval()
    )
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 1, 4, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    whole = apgd_ce(net, x, y, eps=0.1, norm="l2", steps=20, restarts=2, seed=3)
    a = apgd_ce(net, x[:15], y[:15], eps=0.1, norm="l2", steps=20, restarts=2, seed=3)
    b = apgd_ce(
        net, x[15:], y[15:], eps=0.1, norm="l2", steps=20, restarts=2, seed=3, index_offset=15
    )
    assert torch.allclose(torch.cat([a.x_loss, b.x_loss]), whole.x_loss, atol=1e-9)
    assert torch.equal(torch.cat([a.broken, b.broken]), whole.broken)
    # any subset, given its global indices
    pick = torch.tensor([3, 17, 31])
    sub_adv, sub_broken = apgd_targeted(
        net, x[pick], y[pick], eps=0.1, norm="linf", steps=10, indices=pick, n_target_classes=2
    )
    all_adv, all_broken = apgd_targeted(
        net, x, y, eps=0.1, norm="linf", steps=10, n_target_classes=2
    )
    assert torch.equal(sub_broken, all_broken[pick])
    assert torch.allclose(sub_adv, all_adv[pick], atol=1e-9)
    other = apgd_ce(net, x, y, eps=0.1, norm="l2", steps=20, restarts=2, seed=4)
    assert not torch.equal(other.x_loss, whole.x_loss)


def test_dlr_targeted_loss_by_hand() -> None:
    z = torch.tensor([[4.0, 1.0, 3.0, 0.0, 2.0]])
    # sorted 4, 3, 2, 1, 0; y = 0, t = 2: -(4 - 3) / (4 - (2 + 1) / 2)
    assert dlr_targeted_loss(z, torch.tensor([0]), torch.tensor([2])).item() == pytest.approx(
        -1 / 2.5
    )
