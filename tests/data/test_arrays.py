"""Tests of wciaudit.data.arrays: a dict of numpy arrays or torch tensors as the data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_files import arrays, data_error, npz_file

from wciaudit.data import load_data


def test_dict_of_numpy_arrays_equals_the_same_npz(tmp_path):
    x, y = arrays(20)
    xt, yt = arrays(8, seed=1)
    given = {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}
    s = load_data(given, train_samples=10, seed=3)
    ref = load_data(str(npz_file(tmp_path, **given)), train_samples=10, seed=3)
    assert torch.equal(s.x_train, ref.x_train) and torch.equal(s.y_test, ref.y_test)
    assert (s.num_classes, s.n_train_total, s.n_test_total) == (3, 20, 8)
    assert s.name == "arrays" and "in memory" in s.source


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dict_of_tensors(dtype):
    x = torch.rand(6, 1, 4, 4).to(dtype)
    y = torch.arange(6) % 2
    s = load_data({"x_test": x, "y_test": y})
    assert s.x_test.dtype == torch.float32 and not s.has_train
    torch.testing.assert_close(s.x_test, x.float(), rtol=0, atol=0)
    assert s.y_test.tolist() == y.tolist()


def test_dict_uint8_tensor_channels_last_with_the_model_size():
    x = torch.randint(0, 256, (4, 5, 5, 3), dtype=torch.uint8)
    s = load_data(
        {"x_train": x, "y_train": torch.arange(4) % 2}, data_config={"input_size": (3, 5, 5)}
    )
    torch.testing.assert_close(s.x_train, x.permute(0, 3, 1, 2).float() / 255, rtol=0, atol=1e-7)
    assert s.notes and "1/255" in s.source


def test_dict_errors_name_the_key():
    x, y = arrays(4)
    assert "'images'" in data_error({"images": x, "y_train": y})
    assert "no y_train" in data_error({"x_train": x})
    assert "labels go up to 3" in data_error({"x_train": x, "y_train": y + 1, "classes": y[:3]})
    assert "outside the data range" in data_error({"x_train": x * 3, "y_train": y})
    assert "Python objects" in data_error(
        {"x_train": np.array([x[0], "s"], dtype=object), "y_train": y[:2]}
    )
