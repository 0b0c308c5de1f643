"""Tests of wciaudit.data.layout: grey (N, H, W) and channels-last (N, H, W, C) data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_files import npz_file

from wciaudit.data import Splits, load_data, to_channels_first
from wciaudit.data.layout import layout_change


@pytest.mark.parametrize(
    "shape, input_size, expected",
    [
        ((8, 8), (1, 8, 8), "grey"),
        ((8, 8), (3, 8, 8), None),  # grey data for an RGB model: the model check says so
        ((32, 32, 3), (3, 32, 32), "channels-last"),
        ((32, 32, 4), (4, 32, 32), "channels-last"),
        ((32, 32, 1), (1, 32, 32), "channels-last"),
        ((3, 32, 32), (3, 32, 32), None),
        ((3, 16, 16), (3, 32, 32), None),  # channels first, another size: left alone
        ((3, 5, 3), (3, 5, 3), None),  # ambiguous but already what the model wants
        ((7,), (3, 8, 8), None),
        ((32, 32, 3), (10,), None),  # not an image model
        # no input size: a guess from the shape alone
        ((8, 8), None, "grey"),
        ((32, 32, 3), None, "channels-last"),
        ((3, 32, 32), None, None),
        ((3, 8, 3), None, None),  # first axis could be channels: no guess
        ((16, 10), None, "grey"),
        ((7,), None, None),
    ],
)
def test_layout_change(shape, input_size, expected):
    assert layout_change(shape, input_size) == expected


def _labels(n: int) -> np.ndarray:
    return np.arange(n) % 2


def test_npz_grey_gets_a_channel_axis_when_the_model_asks(tmp_path):
    x = np.random.default_rng(0).random((6, 8, 8), dtype=np.float32)
    path = npz_file(tmp_path, x_train=x, y_train=_labels(6))
    s = load_data(str(path), data_config={"input_size": (1, 8, 8)})
    assert s.x_train.shape == (6, 1, 8, 8)
    torch.testing.assert_close(s.x_train[:, 0], torch.from_numpy(x), rtol=0, atol=0)
    assert len(s.notes) == 1 and "channel axis" in s.notes[0] and s.notes[0] in s.source
    # without the model's input size the data is left as stored
    plain = load_data(str(path))
    assert plain.input_shape == [8, 8] and plain.notes == ()


def test_npz_channels_last_uint8_is_moved_and_scaled(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (4, 6, 7, 3), dtype=np.uint8)
    path = npz_file(tmp_path, x_train=x, y_train=_labels(5), x_test=x_test, y_test=_labels(4))
    s = load_data(str(path), data_config={"input_size": (3, 6, 7)}, train_samples=3)
    assert s.input_shape == [3, 6, 7] and s.x_test.shape == (4, 3, 6, 7)
    expected = torch.from_numpy(x_test).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(s.x_test, expected, rtol=0, atol=1e-7)
    assert s.notes == ("channels-last data (N, 6, 7, 3) moved to channels-first (N, 3, 6, 7)",)
    assert s.source.count("channels-last") == 1  # one note for both splits
    assert s.x_train.is_contiguous() and s.x_test.is_contiguous()


def test_to_channels_first_guesses_for_an_unknown_model():
    x = torch.rand(4, 6, 6, 3)
    s = Splits("t", x, torch.zeros(4, dtype=torch.int64), None, None, 1, "t", 4, None)
    moved, note = to_channels_first(s)
    assert moved.input_shape == [3, 6, 6] and note in moved.notes and note in moved.source
    torch.testing.assert_close(moved.x_train, x.permute(0, 3, 1, 2), rtol=0, atol=0)
    assert s.input_shape == [6, 6, 3]  # the input is left alone
    same, none = to_channels_first(moved)
    assert same is moved and none is None
