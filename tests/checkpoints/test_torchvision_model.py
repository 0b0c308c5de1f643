"""torchvision builders by name: weights from .pth/.safetensors state dicts, no download,
no normalisation assumed (and the source says so), clear refusals."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from wciaudit.checkpoints import load_checkpoint
from wciaudit.checkpoints.precedence import FLAG, METADATA, NONE_TORCHVISION
from wciaudit.errors import CheckpointError

torchvision = pytest.importorskip("torchvision")


def _net(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


@pytest.mark.parametrize(
    ("name", "suffix"), [("resnet18", ".pth"), ("squeezenet1_1", ".safetensors")]
)
def test_state_dict_of_two_families(tmp_path, name, suffix):
    net = _net(name, num_classes=10)
    path = tmp_path / f"net{suffix}"
    if suffix == ".pth":
        torch.save(net.state_dict(), path)
    else:
        safetensors.torch.save_file(net.state_dict(), str(path))
    loaded = load_checkpoint(path, arch=f"torchvision:{name}", arch_args='{"num_classes": 10}')
    assert loaded.info.arch == f"torchvision:{name}"
    assert loaded.info.num_classes == 10
    assert (loaded.info.mean, loaded.info.std) == (None, None)
    assert loaded.sources["mean"] == loaded.sources["std"] == NONE_TORCHVISION
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), net(x))
    assert [n for n, _ in loaded.model.named_parameters()] == [n for n, _ in net.named_parameters()]


def test_classes_mean_and_std_from_flags_or_metadata(tmp_path):
    net = _net("squeezenet1_1", num_classes=4)
    path = tmp_path / "s.pth"
    torch.save(net.state_dict(), path)
    loaded = load_checkpoint(
        path, arch="torchvision:squeezenet1_1", num_classes=4, mean=[0.5] * 3, std=[0.25] * 3
    )
    assert loaded.sources["num_classes"] == FLAG and loaded.sources["mean"] == FLAG
    assert loaded.info.mean == [0.5] * 3
    meta = tmp_path / "s.safetensors"
    metadata = {"arch": "torchvision:squeezenet1_1", "num_classes": "4", "mean": "[0.4, 0.4, 0.4]"}
    metadata["std"] = "[0.2, 0.2, 0.2]"
    safetensors.torch.save_file(net.state_dict(), str(meta), metadata=metadata)
    loaded = load_checkpoint(meta)  # the metadata names a registered builder: no --arch
    assert loaded.info.arch == "torchvision:squeezenet1_1" and loaded.info.num_classes == 4
    assert (loaded.info.mean, loaded.sources["mean"]) == ([0.4] * 3, METADATA)


def test_a_scan_says_no_normalisation_was_assumed(tmp_path):
    from wciaudit import Splits, scan

    torch.save(_net("squeezenet1_1", num_classes=3).state_dict(), tmp_path / "s.pth")
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    splits = Splits(
        name="t",
        x_train=x,
        y_train=y,
        x_test=None,
        y_test=None,
        num_classes=3,
        source="test",
        n_train_total=6,
        n_test_total=None,
    )
    result = scan(
        tmp_path / "s.pth",
        splits,
        arch="torchvision:squeezenet1_1",
        arch_args={"num_classes": 3},
        eps=0.05,
        steps=1,
        hessian_samples=6,
        masking_samples=0,
        attack_spread=False,
    )
    assert result.config["preprocessing_source"]["mean"] == NONE_TORCHVISION
    assert any(note.startswith("no input normalisation") for note in result.notes)


def test_refusals(tmp_path):
    path = tmp_path / "r.pth"
    torch.save(_net("resnet18", num_classes=10).state_dict(), path)
    with pytest.raises(CheckpointError, match="no model builder 'resnet1'"):
        load_checkpoint(path, arch="torchvision:resnet1")
    with pytest.raises(CheckpointError, match="never downloads"):
        load_checkpoint(path, arch="torchvision:resnet18", arch_args={"weights": "DEFAULT"})
    with pytest.raises(CheckpointError, match=r"fc.weight has shape \[10, 512\]"):
        load_checkpoint(path, arch="torchvision:resnet18")  # 1000 classes by default
    with pytest.raises(CheckpointError, match="cannot build torchvision model 'resnet18'"):
        load_checkpoint(path, arch="torchvision:resnet18", arch_args={"depth": 3})
