"""The audited model (SPEC: model, layers): normalisation inside the forward, the layer
inventory, eval mode restored per submodule, and the device spellings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wciaudit.errors import ConfigError
from wciaudit.model import (
    AuditedModel,
    eval_mode,
    is_layer_weight,
    no_tf32,
    other_parameters,
    resolve_device,
    weight_layers,
)


def test_normalisation_is_applied_per_channel_inside_the_forward() -> None:
    inner = nn.Identity()
    net = AuditedModel(inner, mean=[0.5, 0.1], std=[0.25, 2.0])
    x = torch.rand(3, 2, 4, 4)
    expected = torch.stack([(x[:, 0] - 0.5) / 0.25, (x[:, 1] - 0.1) / 2.0], 1)
    assert torch.allclose(net(x), expected)
    # without mean/std the input reaches the model unchanged, and no buffer is kept
    plain = AuditedModel(inner)
    assert torch.equal(plain(x), x) and dict(plain.named_buffers()) == {}
    # the statistics are not part of the state dict: checkpoints load without them
    assert "mean" not in net.state_dict() and "std" not in net.state_dict()


def test_a_non_positive_std_is_refused() -> None:
    with pytest.raises(ConfigError, match="std must be positive"):
        AuditedModel(nn.Identity(), mean=[0.5], std=[0.0])


def test_layers_are_weights_of_two_or_more_dimensions_in_model_order_tied_once() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 8), nn.Linear(8, 8)
    )
    net[4].weight = net[3].weight  # tied
    names = [layer.name for layer in weight_layers(net)]
    assert names == ["0.weight", "3.weight"]
    assert weight_layers(net)[0].shape == [2, 1, 3, 3] and weight_layers(net)[0].numel == 18
    kinds = {name: kind for name, _, kind in other_parameters(net)}
    assert kinds == {
        "0.bias": "bias",
        "1.weight": "norm/scale",
        "1.bias": "bias",
        "3.bias": "bias",
        "4.bias": "bias",
    }
    assert is_layer_weight("weight", torch.zeros(2, 2)) and not is_layer_weight(
        "w", torch.zeros(2, 2)
    )


def test_eval_mode_restores_each_submodules_own_flag() -> None:
    net = nn.Sequential(nn.Dropout(), nn.BatchNorm1d(3))
    net[1].eval()  # the caller froze this one
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net[0].training and not net[1].training


def test_no_tf32_restores_the_flags() -> None:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with no_tf32():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_device_spellings() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(ConfigError, match="does not exist"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
