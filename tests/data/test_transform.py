"""Tests of wciaudit.data.transform: adapting image data to the model's input size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wciaudit.data import Splits, fit_to_model, load_data

# ---------------------------------------------------------------------------------------
# fit_to_model
# ---------------------------------------------------------------------------------------


def _splits(x: torch.Tensor) -> Splits:
    y = torch.zeros(len(x), dtype=torch.int64)
    return Splits("t", x, y, None, None, 1, "test", len(x), None)


def test_fit_to_model_grey_resize():
    s = load_data("sample", train_samples=20, test_samples=10)
    fitted, note = fit_to_model(s, (3, 32, 32))
    assert fitted.input_shape == [3, 32, 32]
    assert note == "resized 1x8x8 -> 3x32x32 to the model's input size"
    assert fitted.x_train.shape == (20, 3, 32, 32) and fitted.x_test.shape == (10, 3, 32, 32)
    assert float(fitted.x_train.min()) >= 0.0 and float(fitted.x_train.max()) <= 1.0
    assert torch.equal(fitted.x_train[:, 0], fitted.x_train[:, 2])
    assert s.input_shape == [1, 8, 8]  # the input is left alone


def test_fit_to_model_rgb_to_grey_same_size():
    x = torch.rand(4, 3, 5, 5)
    fitted, note = fit_to_model(_splits(x), (1, 5, 5))
    torch.testing.assert_close(fitted.x_train, x.mean(dim=1, keepdim=True))
    assert note.startswith("converted 3x5x5 -> 1x5x5")


def test_fit_to_model_constant_image_stays_constant():
    x = torch.full((2, 1, 4, 4), 0.25)
    fitted, _ = fit_to_model(_splits(x), (1, 9, 7))
    torch.testing.assert_close(fitted.x_train, torch.full((2, 1, 9, 7), 0.25))


@pytest.mark.parametrize(
    "x, size",
    [
        (torch.rand(3, 1, 8, 8), (1, 8, 8)),  # already fits
        (torch.rand(3, 1, 8, 8), None),  # model size unknown
        (torch.rand(3, 7), (3, 8, 8)),  # not image-shaped
        (torch.rand(3, 2, 8, 8), (3, 8, 8)),  # channels cannot be converted
    ],
)
def test_fit_to_model_unchanged(x, size):
    s = _splits(x)
    fitted, note = fit_to_model(s, size)
    assert fitted is s and note is None


def test_an_image_folder_at_the_input_size_comes_back_unchanged(tmp_path):
    # timm's own default would Resize(9) + CenterCrop(8) (crop_pct 0.875); the API does
    # what the command line does: crop_pct 1.0, the images as they are
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = {}
    for split in ("train", "test"):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(3):
                grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
                Image.fromarray(grey, "L").save(tmp_path / split / label / f"{i}.png")
                pixels.setdefault(split, []).append(grey)
    s = load_data(str(tmp_path), data_config={"input_size": (1, 8, 8)})
    for split, x in (("train", s.x_train), ("test", s.x_test)):
        expected = torch.from_numpy(np.stack(pixels[split])[:, None]).float() / 255
        torch.testing.assert_close(x, expected, rtol=0, atol=0)
    # an explicit crop_pct is still honoured
    cropped = load_data(str(tmp_path), data_config={"input_size": (1, 8, 8), "crop_pct": 0.875})
    assert not torch.equal(cropped.x_train, s.x_train)
