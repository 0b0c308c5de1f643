"""The attribute prefix of a training wrapper (a LightningModule's ``self.model``) is
stripped when, and only when, the keys under it fit the architecture."""

from __future__ import annotations

import torch
from torch import nn

from wciaudit.checkpoints import load_checkpoint
from wciaudit.checkpoints.prefix import fit_attribute_prefix

SOURCE = """
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)
"""


def _net() -> nn.Module:
    namespace: dict = {}
    exec(SOURCE, namespace)
    torch.manual_seed(0)
    return namespace["Net"]()


def test_keys_that_fit_are_left_alone():
    net = _net()
    state = net.state_dict()
    assert fit_attribute_prefix(net, state, others_allowed=True) == (state, None)


def test_the_prefix_that_fits_is_stripped_and_named():
    net = _net()
    inner = net.state_dict()
    wrapped = {f"model.{k}": v for k, v in inner.items()}
    wrapped["loss.weight"] = torch.ones(3)
    wrapped["ema.model.net.1.weight"] = torch.zeros(8, 16)  # starts like it, does not fit
    out, note = fit_attribute_prefix(net, wrapped, others_allowed=True)
    assert list(out) == list(inner)
    assert note.startswith("state_dict prefix 'model.' stripped")
    assert (
        "2 other entries of the checkpoint left out (loss.weight, ema.model.net.1.weight)" in note
    )
    # outside a Lightning checkpoint, every key must carry the prefix
    assert fit_attribute_prefix(net, wrapped, others_allowed=False) == (wrapped, None)
    deeper = {f"lit.model.{k}": v for k, v in inner.items()}
    out, note = fit_attribute_prefix(net, deeper, others_allowed=False)
    assert list(out) == list(inner) and "'lit.model.'" in note


def test_no_fitting_prefix_leaves_the_keys_for_the_strict_loader():
    net = _net()
    other = {f"model.{k}x": v for k, v in net.state_dict().items()}
    assert fit_attribute_prefix(net, other, others_allowed=True) == (other, None)


def test_a_lightning_checkpoint_loads_with_the_prefix_in_its_notes(tmp_path):
    """A dict as Lightning writes it (state_dict of the whole module beside loops,
    optimizer states and hyper-parameters), under .ckpt and renamed .pt."""
    arch = tmp_path / "net.py"
    arch.write_text(SOURCE)
    net = _net()
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    state["criterion.weight"] = torch.ones(3)
    ckpt = {
        "epoch": 1,
        "global_step": 8,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": state,
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
        "hyper_parameters": {"lr": 0.1, "width": 8},
    }
    for name in ("run.ckpt", "run.pt"):
        torch.save(ckpt, tmp_path / name)
        loaded = load_checkpoint(tmp_path / name, arch=f"{arch}:Net")
        assert loaded.info.format == "lightning"
        assert loaded.notes == [
            "state_dict prefix 'model.' stripped: the keys under it fit the architecture; "
            "1 other entry of the checkpoint left out (criterion.weight)"
        ]
        for k, v in net.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[k], v.float()), k
