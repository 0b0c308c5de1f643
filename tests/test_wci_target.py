"""`--tol` says what it did: the JSON's ``wci_target`` and the summary's line say whether
WCI's relative SE met the target, and why not (nothing to act on, the probe cap, or a
rest that only more Hessian samples reduce)."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console
from torch import nn

from wciaudit import scan
from wciaudit.cli.summary import print_summary, target_words
from wciaudit.data import load_data
from wciaudit.result import AuditResult


@pytest.fixture(scope="module")
def splits():  # noqa: ANN201
    return load_data("sample", train_samples=120, test_samples=10, seed=0)


def _net(act: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), act(), nn.Linear(8, 10))


def _scan(net: nn.Module, splits, **settings):  # noqa: ANN001, ANN003, ANN202
    base = dict(eps=0.05, steps=2, hessian_samples=60, masking_samples=0, device="cpu")
    return scan(net, splits, **{**base, **settings})


def test_every_layer_exact_says_there_is_nothing_to_act_on(splits) -> None:  # noqa: ANN001
    loose = _scan(_net(nn.ReLU), splits, tol=0.5)
    tight = _scan(_net(nn.ReLU), splits, tol=0.001)
    assert loose.wci == tight.wci and loose.wci_se == tight.wci_se
    for r, met in ((loose, True), (tight, False)):
        t = r.wci_target
        assert t["met"] is met and t["reason"].startswith("nothing to act on")
        assert t["relative_se"] == pytest.approx(r.wci_se / r.wci)
        assert "--hessian-samples" in t["reason"]
    line = target_words(tight.wci_target)
    assert line.startswith("--tol 0.001: missed") and "nothing to act on" in line


def test_probes_meet_a_loose_target_and_miss_at_the_cap(splits) -> None:  # noqa: ANN001
    met = _scan(_net(nn.GELU), splits, tol=0.5, curvature="hutchinson")
    assert met.wci_target["met"] is True and met.wci_target["reason"] == "met"
    capped = _scan(_net(nn.GELU), splits, tol=1e-4, curvature="hutchinson", max_probes=4)
    t = capped.wci_target
    assert t["met"] is False and t["reason"] != "met"
    assert t["reason"].startswith(("at the probe cap", "the probes' part is within tol"))


def test_the_target_travels_in_the_json_and_the_summary(splits) -> None:  # noqa: ANN001
    r = _scan(_net(nn.ReLU), splits, tol=0.001)
    again = AuditResult.from_json(r.to_json())
    assert again.wci_target == r.wci_target
    out = io.StringIO()
    print_summary(again, Console(file=out, width=120))
    assert "--tol 0.001: missed" in out.getvalue()
