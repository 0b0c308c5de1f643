import os
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


@pytest.fixture(scope="session", autouse=True)
def _private_cache_root(tmp_path_factory: pytest.TempPathFactory):
    """``wciaudit track`` keeps its cache under the user's cache folder; the tests (and the
    commands they start) keep theirs in a temporary one, never in the home folder."""
    old = os.environ.get("WCIAUDIT_CACHE_DIR")
    os.environ["WCIAUDIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("wciaudit-cache"))
    yield
    if old is None:
        os.environ.pop("WCIAUDIT_CACHE_DIR", None)
    else:
        os.environ["WCIAUDIT_CACHE_DIR"] = old
