"""A device out of memory on the input check is said as such, not as a shape problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wciaudit import Splits
from wciaudit.data_choice import check_model_accepts
from wciaudit.errors import ConfigError, DataError


class _Raises(nn.Module):
    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(self.message)


def _splits() -> Splits:
    x, y = torch.rand(4, 1, 4, 4), torch.arange(4) % 2
    return Splits(
        name="toy",
        x_train=x,
        y_train=y,
        x_test=None,
        y_test=None,
        num_classes=2,
        source="generated",
        n_train_total=4,
        n_test_total=None,
    )


def test_out_of_memory_is_not_reported_as_a_wrong_input_shape() -> None:
    net = _Raises("CUDA out of memory. Tried to allocate 20.00 GiB")
    with pytest.raises(ConfigError, match="out of memory on cpu .* --device cpu"):
        check_model_accepts(net, _splits(), torch.device("cpu"), torch.float32)


def test_other_errors_still_say_the_model_does_not_accept_the_inputs() -> None:
    net = _Raises("mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(DataError, match="does not accept inputs of shape"):
        check_model_accepts(net, _splits(), torch.device("cpu"), torch.float32)
