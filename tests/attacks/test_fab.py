"""FAB-T against torchattacks' FAB (multi-targeted, AutoAttack's FAB-T) on a shipped model."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from torch import nn

from wciaudit.attacks.fab import fab_targeted, project_onto_hyperplane
from wciaudit.checkpoints import load_checkpoint
from wciaudit.data import load_data
from wciaudit.errors import ConfigError
from wciaudit.model import AuditedModel

torchattacks = pytest.importorskip("torchattacks")

ROOT = Path(__file__).resolve().parents[2]
EPS = {"linf": 0.1, "l2": 0.5}  # the samples' L-inf threat model; an L2 ball of similar strength


@lru_cache(maxsize=1)
def _model() -> nn.Module:
    models = ROOT / "sample_models"
    loaded = load_checkpoint(models / "digits_cnn.safetensors", arch=str(models / "digits_cnn.py"))
    return AuditedModel(loaded.model, loaded.info.mean, loaded.info.std).eval()


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    splits = load_data("sample", train_samples=10, test_samples=n)
    return splits.x_test, splits.y_test


def _correct(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x).argmax(1) == y


def _size(d: torch.Tensor, norm: str) -> torch.Tensor:
    d = d.flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_matches_torchattacks(norm: str) -> None:
    from torchattacks.attacks.fab import projection_l2, projection_linf

    g = torch.Generator().manual_seed(0)
    t = torch.rand(500, 40, generator=g)
    w = torch.randn(500, 40, generator=g)
    w[:50, :5] = 0  # flat directions
    # offsets around the box's reach, so some planes are out of it (step to the corner)
    b = (w * torch.rand(500, 40, generator=g)).sum(1) * (1 + torch.randn(500, generator=g))
    ref = (projection_linf if norm == "linf" else projection_l2)(t, w, b)
    d = project_onto_hyperplane(t, w, b, norm)
    assert torch.allclose(d, ref, atol=1e-4)
    assert ((t + d) >= 0).all() and ((t + d) <= 1).all()
    reached = ((w * (t + d)).sum(1) - b).abs() < 1e-4
    assert 0.5 < reached.float().mean() < 1  # both cases are exercised


def test_projection_by_hand_in_a_box_other_than_the_unit_cube() -> None:
    # box [-1, 2]; w . t = -0.7, so the step must add w . d = 2.8. Moving towards the
    # plane, x0 has room 0.2 (up), x1 2.5 (up), x2 2.5 (down).
    t = torch.tensor([[1.8, -0.5, 1.5]])
    w = torch.tensor([[1.0, 2.0, -1.0]])
    b = torch.tensor([2.1])
    # L-inf: min(tau, 0.2) + 2 tau + tau = 2.8 -> tau = 2.6 / 3, x0 stops at its face
    d = project_onto_hyperplane(t, w, b, "linf", lo=-1.0, hi=2.0)
    tau = 2.6 / 3
    assert torch.allclose(d, torch.tensor([[0.2, tau, -tau]]))
    # L2: d_i = w_i min(mu, room_i / |w_i|); min(mu, 0.2) + 4 mu + mu = 2.8 -> mu = 0.52
    d = project_onto_hyperplane(t, w, b, "l2", lo=-1.0, hi=2.0)
    assert torch.allclose(d, torch.tensor([[0.2, 1.04, -0.52]]))
    # a plane out of the box's reach: the step goes to the nearest corner
    d = project_onto_hyperplane(t, w, torch.tensor([100.0]), "l2", lo=-1.0, hi=2.0)
    assert torch.allclose(t + d, torch.tensor([[2.0, 2.0, -1.0]]))


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_robust_accuracy_agrees_with_torchattacks(norm: str) -> None:
    net, (x, y) = _model(), _data(64)
    eps = EPS[norm]
    # AutoAttack's settings (the defaults: 100 steps, one run) except 3 target classes
    # instead of 9, to keep the test fast; torchattacks targets the n_classes - 1 most
    # likely wrong classes, so n_classes=4 means the same 3 targets in the same order.
    ours = fab_targeted(net, x, y, eps=eps, norm=norm, n_target_classes=3)
    ref_attack = torchattacks.FAB(
        net,
        norm={"linf": "Linf", "l2": "L2"}[norm],
        eps=eps,
        steps=100,
        n_restarts=1,
        multi_targeted=True,
        n_classes=4,
    )
    theirs = ref_attack(x, y)
    a, b = _correct(net, ours, y), _correct(net, theirs, y)
    # Paired outcomes on the same examples: only the discordant pairs carry information.
    # If both attacks broke each example with the same probability, the number of
    # examples only ours leaves robust would be Binomial(D, 1/2) given D discordant
    # pairs, so the difference of the two robust counts has mean 0 and sd sqrt(D);
    # 3 sd leaves a false alarm rate of 0.3%. (FAB-T with one run is deterministic and
    # the projections agree to 1e-6, so D is 0 here unless rounding flips a decision.)
    only_ours, only_theirs = int((a & ~b).sum()), int((~a & b).sum())
    assert abs(only_ours - only_theirs) <= 3 * math.sqrt(only_ours + only_theirs)
    assert 0 < a.float().mean() < _correct(net, x, y).float().mean()  # it breaks some, not all
    assert (_size(ours - x, norm) <= eps + 1e-6).all()
    assert ours.min() >= 0 and ours.max() <= 1
    # what it did not break is returned unchanged
    assert torch.equal(ours[a], x[a])


def test_misclassified_inputs_stay_broken_and_unchanged() -> None:
    net, (x, y) = _model(), _data(16)
    y = y.clone()
    y[:3] = (y[:3] + 1) % 10  # the model now errs on the first three examples
    x_adv = fab_targeted(net, x, y, eps=0.1, norm="linf", steps=5, n_target_classes=2)
    assert torch.equal(x_adv[:3], x[:3])
    assert not _correct(net, x_adv[:3], y[:3]).any()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_results_do_not_depend_on_the_batch(norm: str) -> None:
    net, (x, y) = _model(), _data(40)
    kw = dict(eps=EPS[norm], norm=norm, steps=8, n_target_classes=2, restarts=2, seed=3)
    whole = fab_targeted(net, x, y, **kw)
    parts = torch.cat(
        [
            fab_targeted(net, x[:17], y[:17], **kw),
            fab_targeted(net, x[17:], y[17:], index_offset=17, **kw),
        ]
    )
    assert torch.allclose(whole, parts, atol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_starts_lie_at_half_eps_and_follow_the_seed(norm: str) -> None:
    # (on the sample model, restarts from random starts find nothing FAB from x missed,
    # so the seed is checked on the starts themselves)
    from wciaudit.attacks.fab import _random_start
    from wciaudit.config import Norm

    x = torch.full((6, 1, 4, 4), 0.5)
    index = torch.arange(6) + 100

    def start(seed: int, rank: int = 1, restart: int = 1) -> torch.Tensor:
        return _random_start(x, 0.2, Norm(norm), 0.0, 1.0, seed, index, rank, restart)

    a = start(0)
    assert torch.allclose(_size(a - x, norm), torch.full((6,), 0.1))
    assert torch.equal(a, start(0))
    assert torch.equal(a[2:], _random_start(x[2:], 0.2, Norm(norm), 0.0, 1.0, 0, index[2:], 1, 1))
    for other in (start(1), start(0, rank=2), start(0, restart=2)):
        assert not torch.isclose(a, other).flatten(1).all(1).any()


def test_zero_eps_and_bad_settings() -> None:
    net, (x, y) = _model(), _data(8)
    assert torch.equal(fab_targeted(net, x, y, eps=0.0, norm="linf"), x)
    with pytest.raises(ConfigError, match="norm"):
        fab_targeted(net, x, y, eps=0.1, norm="l1")
    with pytest.raises(ConfigError, match="steps"):
        fab_targeted(net, x, y, eps=0.1, norm="l2", steps=0)
    with pytest.raises(ConfigError, match="eps"):
        fab_targeted(net, x, y, eps=-1.0, norm="l2")
