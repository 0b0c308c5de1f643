"""Which data a scan runs on: no silent fallback to the sample, notes for every resize."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wciaudit.checkpoints import LoadedCheckpoint, loaded_from_module
from wciaudit.config import LoadOptions, ScanConfig
from wciaudit.data_choice import check_model_accepts, choose_data
from wciaudit.errors import DataError

CFG = ScanConfig(train_samples=20, test_samples=20)


def _loaded(channels: int, size: int, **sources: str) -> LoadedCheckpoint:
    model = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, 10))
    opts = LoadOptions(
        input_size=(channels, size, size), mean=[0.5] * channels, std=[0.5] * channels
    )
    loaded = loaded_from_module(model, opts)
    loaded.sources.update(sources)
    return loaded


def test_a_model_for_another_shape_is_not_fed_the_sample_silently() -> None:
    loaded = _loaded(3, 16, input_size="timm config")
    with pytest.raises(DataError) as info:
        choose_data(None, loaded, CFG, [])
    message = str(info.value)
    assert "\n" not in message
    assert "3x16x16" in message and "1x8x8" in message and "timm config" in message
    assert "--data" in message and "--data sample" in message


def test_the_sample_asked_for_is_resized_with_a_note() -> None:
    notes: list[str] = []
    splits, reason = choose_data("sample", _loaded(3, 16, input_size="flag"), CFG, notes)
    assert splits.input_shape == [3, 16, 16] and "resized 1x8x8 -> 3x16x16" in reason
    assert any(
        "resized 1x8x8 -> 3x16x16" in n and "input size 3x16x16 from flag" in n for n in notes
    )
    assert any("mean [0.5, 0.5, 0.5]" in n and "from flag" in n for n in notes)


def test_the_sample_is_used_as_is_for_a_model_that_takes_its_shape() -> None:
    notes: list[str] = []
    splits, reason = choose_data(None, _loaded(1, 8), CFG, notes)
    assert splits.input_shape == [1, 8, 8] and "accepts the shipped sample" in reason
    assert not any("resized" in n for n in notes)


def test_a_checkpoint_that_names_the_sample_gets_it_fitted() -> None:
    loaded = _loaded(3, 16, input_size="checkpoint metadata")
    loaded.dataset_hint = "digits"
    notes: list[str] = []
    splits, reason = choose_data(None, loaded, CFG, notes)
    assert splits.input_shape == [3, 16, 16] and "names dataset 'digits'" in reason
    assert any("from checkpoint metadata" in n for n in notes)
    assert torch.all((splits.x_train >= 0) & (splits.x_train <= 1))


def _grey_pngs(root) -> None:  # noqa: ANN001
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(2):
                grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
                Image.fromarray(grey, "L").save(root / split / label / f"{i}.png")


def test_grey_images_without_an_input_size_say_which_flag_reads_them(tmp_path) -> None:  # noqa: ANN001
    _grey_pngs(tmp_path)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    loaded = loaded_from_module(model, LoadOptions())
    with pytest.raises(DataError) as info:
        choose_data(str(tmp_path), loaded, CFG, [])
    assert str(info.value) == (
        "the model does not accept the data: the images were read as RGB, (3, 8, 8), because "
        "the model's input size is unknown, but the model's first layer 0 (Conv2d) takes 1 "
        "channel, (N, 1, H, W): pass --input-size 1,8,8"
    )
    # and that flag does read them
    fixed = loaded_from_module(model, LoadOptions(input_size=(1, 8, 8)))
    splits, _ = choose_data(str(tmp_path), fixed, CFG, [])
    assert splits.input_shape == [1, 8, 8]


def _labelled(y_train: list[int], y_test: list[int]):  # noqa: ANN202
    from wciaudit.data import Splits

    return Splits(
        "t",
        torch.rand(len(y_train), 4),
        torch.tensor(y_train),
        torch.rand(len(y_test), 4),
        torch.tensor(y_test),
        max(y_train + y_test) + 1,
        "t",
        len(y_train),
        len(y_test),
    )


def test_labels_are_judged_against_the_models_outputs() -> None:
    cpu = torch.device("cpu")
    wide = nn.Linear(4, 1000)
    # a 1000-class model on examples of classes 7..997: valid, with a note
    note = check_model_accepts(wide, _labelled([7, 500], [997, 8]), cpu, torch.float32)
    assert note is not None and "labels run 7..997" in note
    # one-based labels 1..10 on a 10-class model: the evidence of a shift
    with pytest.raises(DataError) as info:
        check_model_accepts(nn.Linear(4, 10), _labelled([1, 5], [10]), cpu, torch.float32)
    assert str(info.value).startswith("labels run 1..10 but the model has 10 outputs")
    assert "subtract 1" in str(info.value)
    # the same labels on an 11-class model fit
    assert (
        check_model_accepts(nn.Linear(4, 11), _labelled([1, 5], [10]), cpu, torch.float32) is None
    )
