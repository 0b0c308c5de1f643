import sys
from pathlib import Path

import pytest
import torch

# tests import their exact references from tests/reference.py
sys.path.insert(0, str(Path(__file__).parent))

from wciaudit.checkpoints import load_checkpoint  # noqa: E402
from wciaudit.data import load_data  # noqa: E402
from wciaudit.model import AuditedModel  # noqa: E402

# CPU and GPU agree only with TF32 off; tests never rely on global seeding
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits_cnn() -> AuditedModel:
    """The shipped sample CNN, wrapped with its normalisation, in eval mode."""
    loaded = load_checkpoint(
        ROOT / "sample_models" / "digits_cnn.safetensors",
        arch=str(ROOT / "sample_models" / "digits_cnn.py"),
    )
    return AuditedModel(loaded.model, loaded.info.mean, loaded.info.std).eval()


@pytest.fixture(scope="session")
def digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    """96 test examples, a stratified seeded subset of the shipped sample data."""
    splits = load_data("sample", test_samples=96, seed=0)
    return splits.x_test, splits.y_test
