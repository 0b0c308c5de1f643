"""The shipped sample CNN and sample test data, shared by the attack tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wciaudit.checkpoints import load_checkpoint
from wciaudit.data import load_data
from wciaudit.model import AuditedModel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def digits_cnn() -> AuditedModel:
    loaded = load_checkpoint(ROOT / "sample_models" / "digits_cnn.safetensors",
                             arch=str(ROOT / "sample_models" / "digits_cnn.py"))
    return AuditedModel(loaded.model, loaded.info.mean, loaded.info.std).eval()


@pytest.fixture(scope="session")
def digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    """96 test examples, a stratified seeded subset of the shipped sample data."""
    splits = load_data("sample", test_samples=96, seed=0)
    return splits.x_test, splits.y_test
