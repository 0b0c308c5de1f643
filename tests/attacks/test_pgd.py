"""PGD / FGSM: the threat model of the SPEC."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wciaudit.attacks.pgd import (
    _start,
    attack_split,
    descend,
    perturb,
    pgd_attack,
    random_start_noise,
)
from wciaudit.config import ScanConfig


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("attack", ["pgd", "fgsm"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_examples_stay_in_the_ball_and_the_range(attack: str, norm: str) -> None:
    x, y = _data()
    cfg = ScanConfig(eps=0.3, attack=attack, norm=norm, steps=5, restarts=2)
    x_adv = perturb(_net(), x, y, cfg)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    d = (x_adv - x).flatten(1)
    size = d.abs().max(1).values if norm == "linf" else d.norm(dim=1)
    assert (size <= 0.3 + 1e-6).all()


def test_robust_loss_is_at_least_the_clean_loss() -> None:
    net, (x, y) = _net(), _data(256)
    x_adv = perturb(net, x, y, ScanConfig(eps=0.1, steps=10))
    with torch.no_grad():
        assert F.cross_entropy(net(x_adv), y) > F.cross_entropy(net(x), y)


def test_same_seed_same_examples_independent_of_batching() -> None:
    net, (x, y) = _net(), _data(300)
    cfg = ScanConfig(eps=0.1, steps=3, seed=7, batch_size=300)
    a = attack_split(net, x, y, cfg, torch.device("cpu"))
    b = attack_split(net, x, y, cfg.with_(batch_size=37), torch.device("cpu"))
    c = attack_split(net, x, y, cfg.with_(seed=8), torch.device("cpu"))
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.equal(a, c)


def test_random_start_depends_on_the_example_index_only() -> None:
    whole = random_start_noise((600, 3), 0, seed=1, stream=0, restart=0)
    part = random_start_noise((100, 3), 250, seed=1, stream=0, restart=0)
    assert torch.equal(whole[250:350], part)
    assert whole.abs().max() <= 1


def test_fgsm_is_one_signed_step_of_size_eps_from_x() -> None:
    net, (x, y) = _net(), _data()
    cfg = ScanConfig(eps=0.05, attack="fgsm", steps=10, restarts=5)
    assert cfg.alpha == 0.05 and cfg.effective_steps == 1 and cfg.effective_restarts == 1
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(net(xr), y), xr)
    expected = (x + 0.05 * g.sign()).clamp(0, 1)
    assert torch.allclose(perturb(net, x, y, cfg), expected)


def test_default_step_size_is_2_5_eps_over_k() -> None:
    assert ScanConfig(eps=0.1, steps=10).alpha == pytest.approx(0.025)


def test_zero_eps_returns_the_clean_inputs() -> None:
    x, y = _data()
    assert torch.equal(perturb(_net(), x, y, ScanConfig(eps=0.0)), x)


def test_restarts_keep_the_worst_loss_per_example() -> None:
    net, (x, y) = _net(), _data(128)
    one = perturb(net, x, y, ScanConfig(eps=0.2, steps=2, restarts=1, seed=3))
    many = perturb(net, x, y, ScanConfig(eps=0.2, steps=2, restarts=4, seed=3))
    with torch.no_grad():
        l1 = F.cross_entropy(net(one), y, reduction="none")
        l4 = F.cross_entropy(net(many), y, reduction="none")
    # restart 0 is shared, so each example's kept loss can only grow
    assert (l4 >= l1 - 1e-6).all()


def test_an_example_broken_by_any_restart_counts_as_broken() -> None:
    net, (x, _) = _net(), _data(256)
    with torch.no_grad():
        y = net(x).argmax(1)  # clean accuracy 1, so every break is the attack's
    cfg = ScanConfig(eps=0.1, norm="linf", steps=2, restarts=4, seed=5)
    out = pgd_attack(net, x, y, cfg)
    finals = []  # each restart alone: its start depends on (seed, stream, restart, index)
    for r in range(4):
        x_r = descend(net, x, y, _start(x, cfg, 0, 0, r), cfg)
        with torch.no_grad():
            finals.append(net(x_r).argmax(1) == y)
    assert torch.equal(out.correct, torch.stack(finals).all(0))
    with torch.no_grad():
        adv_correct = net(out.x_adv).argmax(1) == y
        loss_at_x_loss = F.cross_entropy(net(out.x_loss), y, reduction="none")
        worst_loss_correct = net(out.x_loss).argmax(1) == y
    # x_adv shows the break; x_loss carries the worst loss over the restarts
    assert torch.equal(adv_correct, out.correct)
    assert torch.allclose(loss_at_x_loss, out.loss, atol=1e-6)
    # worst-loss selection would call some broken examples robust: the rule matters here
    assert (worst_loss_correct & ~out.correct).any()


def test_one_restart_needs_no_extra_forward_pass() -> None:
    net, (x, y) = _net(), _data(32)
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    perturb(net, x, y, ScanConfig(eps=0.1, steps=5, restarts=1))
    assert len(calls) == 5
    calls.clear()
    out = pgd_attack(net, x, y, ScanConfig(eps=0.1, steps=5, restarts=1))
    assert len(calls) == 6 and out.loss is not None  # the sixth is the evaluation itself


def test_starts_do_not_depend_on_how_the_split_is_sharded() -> None:
    net, (x, y) = _net(), _data(90)
    cfg = ScanConfig(eps=0.1, steps=3, seed=2, restarts=2, batch_size=16)
    whole = pgd_attack(net, x, y, cfg, stream=1)
    # two "processes", each with its shard and its global offset
    a = pgd_attack(net, x[:40], y[:40], cfg, start=0, stream=1)
    b = pgd_attack(net, x[40:], y[40:], cfg, start=40, stream=1)
    assert torch.allclose(torch.cat([a.x_loss, b.x_loss]), whole.x_loss, atol=1e-6)
    assert torch.equal(torch.cat([a.correct, b.correct]), whole.correct)
    # restarts and streams draw different starts
    r0 = random_start_noise((5, 3), 0, seed=1, stream=0, restart=0)
    assert not torch.equal(r0, random_start_noise((5, 3), 0, seed=1, stream=0, restart=1))
    assert not torch.equal(r0, random_start_noise((5, 3), 0, seed=1, stream=1, restart=0))
