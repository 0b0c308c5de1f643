"""Tests of wciaudit.model_inputs: the layer that refuses the data, and the words for it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wciaudit.model_inputs import Refusal, mismatch_words, refusing_layer


class GreyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


class Reshaping(nn.Module):
    """Fails in its own forward, before any watched layer."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.view(x.shape[0], 8, 8).flatten(1))


def _words(model: nn.Module, shape: tuple[int, ...], **kwargs: bool) -> str:
    refusal = refusing_layer(model, torch.zeros(2, *shape))
    assert refusal is not None
    return mismatch_words(shape, refusal, **kwargs)


def test_rgb_channels_last_on_a_grey_model_names_shape_and_channels() -> None:
    refusal = refusing_layer(GreyNet(), torch.zeros(2, 8, 8, 3))
    assert refusal == Refusal("conv", "Conv2d", True, (8, 8, 3), channels=1, spatial=2)
    words = mismatch_words((8, 8, 3), refusal)
    assert words.startswith("the data's examples have shape (8, 8, 3), channels-last with 3")
    assert "first layer conv (Conv2d) takes 1 channel, (N, 1, H, W)" in words
    assert "give 1-channel data" in words and "got 32 channels" not in words


def test_grey_images_read_as_rgb_point_to_input_size() -> None:
    words = _words(GreyNet(), (3, 8, 8), images_read_as_rgb=True)
    assert "read as RGB, (3, 8, 8)" in words and words.endswith("pass --input-size 1,8,8")
    # the same data from arrays: no option reads arrays as grey
    assert "--input-size" not in _words(GreyNet(), (3, 8, 8))


def test_channels_last_with_the_models_channel_count_points_to_input_size() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    words = _words(model, (6, 6, 3))
    assert "look channels-last, shape (6, 6, 3)" in words
    assert words.endswith("pass --input-size 3,6,6 to move its channel axis first")


def test_vectors_and_sequences_are_not_taken_for_images() -> None:
    vectors = _words(nn.Sequential(nn.Linear(16, 3)), (12,))
    assert vectors == (
        "the data's examples have shape (12,) (12 in the last axis, 12 values), but the "
        "model's first layer 0 (Linear) takes 16 features"
    )
    sequences = _words(nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten()), (5, 40))
    assert "shape (5, 40), channels-first with 5 channels" in sequences
    assert "takes 2 channels, (N, 2, L)" in sequences and "H, W" not in sequences
    flat = _words(nn.Sequential(nn.Conv1d(1, 4, 3), nn.Flatten()), (40,))
    assert "shape (40,), with no channel axis" in flat and "(N, 1, L)" in flat


def test_images_into_a_model_that_does_not_flatten() -> None:
    words = _words(nn.Sequential(nn.Linear(64, 10)), (1, 8, 8))
    assert "(64 values)" in words and "does not flatten its input" in words


def test_a_deeper_layer_refusing_means_another_input_size() -> None:
    refusal = refusing_layer(GreyNet(), torch.zeros(2, 1, 12, 12))
    assert refusal is not None and refusal.name == "head" and not refusal.first
    assert refusal.received == (4 * 12 * 12,)
    words = mismatch_words((1, 12, 12), refusal)
    assert words.startswith("the model's layer head (Linear) takes 256 features but gets (576,)")
    assert "inputs of another size" in words


@pytest.mark.parametrize(
    "model, x",
    [
        (GreyNet(), torch.zeros(2, 1, 8, 8)),  # accepted
        (Reshaping(), torch.zeros(2, 3, 8, 8)),  # fails before any watched layer
    ],
)
def test_no_refusing_layer_when_none_raised(model: nn.Module, x: torch.Tensor) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert refusing_layer(model, x) is None
    # the hooks are gone and the weights untouched
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
