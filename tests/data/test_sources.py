"""Tests of the data sources (wciaudit.data.load, npz, image_folder, cifar): the shipped
sample, .npz files, ImageFolder trees, CIFAR batches, and their one-line errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from data_files import arrays, both_splits, data_error, npz_file

from wciaudit.data import SAMPLE_NAMES, load_data
from wciaudit.errors import ConfigError

# ---------------------------------------------------------------------------------------
# the shipped sample
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SAMPLE_NAMES)
def test_sample_loads(spec):
    s = load_data(spec)
    assert s.name == "digits"
    assert (len(s.y_train), len(s.y_test)) == (1000, 797)
    assert (s.n_train_total, s.n_test_total) == (1000, 797)
    assert s.input_shape == [1, 8, 8]
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    for x in (s.x_train, s.x_test):
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert s.num_classes == 10
    assert s.has_train and s.has_test
    assert "shipped sample" in s.source


def test_sample_is_mapped_to_the_data_range():
    s = load_data("sample", lo=-1.0, hi=1.0, test_samples=50)
    ref = load_data("sample", test_samples=50)
    torch.testing.assert_close(s.x_test, ref.x_test * 2 - 1)
    assert "[-1, 1]" in s.source


def test_bad_range_and_sample_counts_are_config_errors():
    with pytest.raises(ConfigError):
        load_data("sample", lo=1.0, hi=0.0)
    with pytest.raises(ConfigError):
        load_data("sample", train_samples=0)


# ---------------------------------------------------------------------------------------
# npz files
# ---------------------------------------------------------------------------------------


def test_npz_both_splits(tmp_path):
    s = load_data(str(both_splits(tmp_path)))
    assert s.name.startswith("npz:")
    assert (len(s.y_train), len(s.y_test)) == (30, 12)
    assert s.input_shape == [1, 4, 4]
    assert s.num_classes == 3
    assert s.x_train.dtype == torch.float32


def test_npz_train_only(tmp_path):
    s = load_data(str(both_splits(tmp_path, x_test=None, y_test=None)))
    assert s.has_train and not s.has_test
    assert s.n_test_total is None and s.y_test is None


def test_npz_test_only(tmp_path):
    s = load_data(str(both_splits(tmp_path, x_train=None, y_train=None)))
    assert s.has_test and not s.has_train
    assert s.input_shape == [1, 4, 4]
    assert s.n_train_total is None


def test_npz_non_image_shape(tmp_path):
    x, y = arrays(20, shape=(7,))
    s = load_data(str(npz_file(tmp_path, x_train=x, y_train=y)))
    assert s.input_shape == [7]


def test_npz_classes_array_sets_num_classes(tmp_path):
    x, y = arrays(20)
    path = npz_file(tmp_path, x_train=x, y_train=y, classes=np.array(list("abcde")))
    assert load_data(str(path)).num_classes == 5


def test_npz_uint8_is_scaled(tmp_path):
    x = np.full((6, 1, 2, 2), 255, dtype=np.uint8)
    x[0] = 0
    y = np.arange(6) % 2
    s = load_data(str(npz_file(tmp_path, x_train=x, y_train=y)))
    assert float(s.x_train.min()) == 0.0 and float(s.x_train.max()) == 1.0
    assert "1/255" in s.source


def test_npz_integral_float_labels_are_accepted(tmp_path):
    x, y = arrays(9)
    s = load_data(str(npz_file(tmp_path, x_train=x, y_train=y.astype(np.float32))))
    assert s.y_train.dtype == torch.int64
    assert s.y_train.tolist() == y.tolist()


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    message = data_error(tmp_path / "nope.npz")
    assert "not found" in message and "nope.npz" in message


def test_not_an_archive(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_text("not a zip")
    assert "junk.npz" in data_error(path)


def test_wrong_keys(tmp_path):
    message = data_error(npz_file(tmp_path, images=np.zeros((2, 3)), labels=np.zeros(2)))
    assert "x_train" in message and "images" in message


def test_x_without_y(tmp_path):
    x, _ = arrays(4)
    assert "no y_train" in data_error(npz_file(tmp_path, x_train=x))


def test_nan(tmp_path):
    x, y = arrays(8)
    x[3, 0, 0, 0] = np.nan
    assert "NaN" in data_error(npz_file(tmp_path, x_train=x, y_train=y))


def test_out_of_range_shows_min_and_max(tmp_path):
    x, y = arrays(8)
    x[0, 0, 0, 0] = -0.5
    x[1, 0, 0, 0] = 2.5
    message = data_error(npz_file(tmp_path, x_train=x, y_train=y))
    assert "-0.5" in message and "2.5" in message and "x_train" in message


def test_out_of_range_accepted_with_matching_lo_hi(tmp_path):
    x, y = arrays(8)
    x[0, 0, 0, 0] = -0.5
    s = load_data(str(npz_file(tmp_path, x_train=x, y_train=y)), lo=-1.0, hi=1.0)
    assert (s.lo, s.hi) == (-1.0, 1.0)


def test_length_mismatch(tmp_path):
    x, y = arrays(8)
    message = data_error(npz_file(tmp_path, x_train=x, y_train=y[:5]))
    assert "8" in message and "5" in message


def test_float_non_integer_labels(tmp_path):
    x, y = arrays(8)
    message = data_error(npz_file(tmp_path, x_train=x, y_train=y + 0.5))
    assert "non-integer" in message


def test_negative_labels(tmp_path):
    x, y = arrays(8)
    y[2] = -1
    assert "negative" in data_error(npz_file(tmp_path, x_train=x, y_train=y))


def test_empty_split(tmp_path):
    x, y = arrays(8)
    path = both_splits(tmp_path, x_test=x[:0], y_test=y[:0])
    assert "empty" in data_error(path)


def test_mismatched_shapes_across_splits(tmp_path):
    x, y = arrays(8, shape=(1, 5, 5))
    message = data_error(both_splits(tmp_path, x_test=x, y_test=y))
    assert "[1, 4, 4]" in message and "[1, 5, 5]" in message


def test_integer_inputs_other_than_uint8(tmp_path):
    x = np.zeros((4, 2), dtype=np.int32)
    assert "int32" in data_error(npz_file(tmp_path, x_train=x, y_train=np.arange(4)))


def test_object_arrays_are_never_unpickled(tmp_path):
    x = np.empty(2, dtype=object)
    x[:] = [{"a": 1}, {"b": 2}]
    path = npz_file(tmp_path, x_train=x, y_train=np.arange(2))
    assert "x_train" in data_error(path)


def test_unknown_spec_lists_forms(tmp_path):
    message = data_error("imagenet")
    for form in ("sample", "file.npz", "DIR", "cifar10:DIR", "cifar100:DIR"):
        assert form in message
    other = tmp_path / "data.csv"
    other.write_text("1,2")
    assert "cifar10:DIR" in data_error(other)


def test_too_large_for_max_bytes(tmp_path):
    # float32: (30 + 12) examples * 16 values * 4 bytes = 2688 bytes; x_train stored: 1920
    path = both_splits(tmp_path)
    message = data_error(path, max_bytes=2000)
    assert "GiB" in message and "--train-samples" in message and "d.npz" in message
    s = load_data(str(path), max_bytes=2000, train_samples=2, test_samples=2)
    assert len(s.y_train) == 2
    # a subset does not help when the stored array itself is over the limit
    assert "stored" in data_error(path, max_bytes=1000, train_samples=2, test_samples=2)


# ---------------------------------------------------------------------------------------
# ImageFolder
# ---------------------------------------------------------------------------------------


def _image_folder(root: Path, splits: dict[str, dict[str, int]], size=(6, 5), mode="RGB") -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in splits.items():
        for cls, count in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                channels = 3 if mode == "RGB" else 1
                pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
                Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(
                    folder / f"{i}.png"
                )
    return root


def test_image_folder_train_test_at_own_size(tmp_path):
    root = _image_folder(tmp_path, {"train": {"cat": 3, "dog": 2}, "test": {"cat": 1, "dog": 2}})
    s = load_data(str(root))
    assert s.name.startswith("imagefolder:")
    assert s.input_shape == [3, 5, 6]
    assert (len(s.y_train), len(s.y_test)) == (5, 3)
    assert s.num_classes == 2
    assert s.y_train.tolist() == [0, 0, 0, 1, 1]
    assert float(s.x_train.min()) >= 0.0 and float(s.x_train.max()) <= 1.0


def test_image_folder_val_and_model_transform(tmp_path):
    root = _image_folder(
        tmp_path, {"train": {"a": 2, "b": 2}, "val": {"b": 2}}, size=(12, 12), mode="L"
    )
    config = {"input_size": (1, 8, 8), "interpolation": "bilinear", "crop_pct": 1.0}
    s = load_data(str(root), data_config=config)
    assert s.input_shape == [1, 8, 8]
    # test classes are mapped through the train's class-to-index map
    assert s.y_test.tolist() == [1, 1]
    assert "val" in s.source


def test_image_folder_grey_to_rgb(tmp_path):
    root = _image_folder(tmp_path, {"train": {"a": 2}}, size=(8, 8), mode="L")
    s = load_data(str(root), data_config={"input_size": (3, 8, 8), "crop_pct": 1.0})
    assert s.input_shape == [3, 8, 8]
    assert torch.equal(s.x_train[:, 0], s.x_train[:, 1])


def test_image_folder_subset_and_size_check(tmp_path):
    root = _image_folder(tmp_path, {"train": {"a": 4, "b": 4}, "test": {"a": 2, "b": 2}})
    s = load_data(str(root), train_samples=4, test_samples=2)
    assert torch.bincount(s.y_train).tolist() == [2, 2]
    assert (s.n_train_total, s.n_test_total) == (8, 4)
    assert "GiB" in data_error(root, max_bytes=100)


def test_image_folder_class_mismatch(tmp_path):
    root = _image_folder(tmp_path, {"train": {"a": 1, "b": 1}, "test": {"a": 1, "zebra": 1}})
    message = data_error(root)
    assert "zebra" in message


def test_image_folder_unequal_sizes_without_input_size(tmp_path):
    root = _image_folder(tmp_path, {"train": {"a": 1}})
    _image_folder(tmp_path / "more", {"train": {"a": 1}}, size=(9, 9))
    (tmp_path / "more" / "train" / "a" / "0.png").rename(root / "train" / "a" / "1.png")
    assert "same size" in data_error(root)


def test_image_folder_without_splits(tmp_path):
    (tmp_path / "images").mkdir()
    assert "train/" in data_error(tmp_path)


# ---------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------


def test_cifar_missing_files(tmp_path):
    message = data_error(f"cifar10:{tmp_path}")
    assert "not found" in message and "never downloads" in message
    assert "never downloads" in data_error(f"cifar100:{tmp_path}")


def test_cifar10_fake_batches(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    # the md5 sums of the real files cannot match tiny fake batches
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {
            "data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
            "labels": [0, 1, 2, 3],
        }
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = {"label_names": [f"c{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))

    s = load_data(f"cifar10:{tmp_path}", train_samples=8)
    assert s.name == "cifar10" and s.num_classes == 10
    assert s.input_shape == [3, 32, 32]
    assert (len(s.y_train), s.n_train_total, s.n_test_total) == (8, 20, 4)
    assert float(s.x_train.min()) >= 0.0 and float(s.x_train.max()) <= 1.0
    # the batches folder itself is accepted too
    assert load_data(f"cifar10:{folder}").n_test_total == 4
