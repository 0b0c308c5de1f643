"""Small data files for the data tests: arrays, .npz archives, one-line DataErrors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wciaudit.data import load_data
from wciaudit.errors import DataError


def arrays(n: int, shape=(1, 4, 4), classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, *shape), dtype=np.float32)
    y = np.arange(n, dtype=np.int64) % classes
    return x, y


def npz_file(tmp_path: Path, name: str = "d.npz", **named: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, **named)
    return path


def both_splits(tmp_path: Path, **overrides) -> Path:
    x_train, y_train = arrays(30)
    x_test, y_test = arrays(12, seed=1)
    given = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    given.update(overrides)
    return npz_file(tmp_path, **{k: v for k, v in given.items() if v is not None})


def data_error(spec, **kwargs) -> str:
    """The message of the DataError that loading ``spec`` raises; it must be one line."""
    with pytest.raises(DataError) as info:
        load_data(spec if isinstance(spec, dict) else str(spec), **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message
