"""Which data a scan runs on: no silent fallback to the sample, notes for every resize."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wciaudit.checkpoints import LoadedCheckpoint, loaded_from_module
from wciaudit.config import LoadOptions, ScanConfig
from wciaudit.data_choice import choose_data
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
