"""Tests of wciaudit.data.labels: labels 0..C-1, and the model-outputs note."""

from __future__ import annotations

import numpy as np
import pytest
from data_files import arrays, both_splits, data_error, npz_file

from wciaudit.data import class_count_note, load_data


def test_one_based_labels_say_subtract_one(tmp_path):
    x, y = arrays(20, classes=10)
    message = data_error(npz_file(tmp_path, x_train=x, y_train=y + 1))
    assert "labels run 1..10" in message and "0..C-1" in message and "subtract 1" in message


def test_labels_must_start_at_zero_over_both_splits(tmp_path):
    x, y = arrays(12)
    # the test split alone lacks class 0, the train split has it: fine
    s = load_data(str(both_splits(tmp_path, y_test=np.full(12, 2))))
    assert s.num_classes == 3
    message = data_error(both_splits(tmp_path, y_train=np.full(30, 4), y_test=y + 4))
    assert "labels run 4..6" in message


def test_a_classes_array_allows_labels_without_zero(tmp_path):
    x, y = arrays(12)
    path = npz_file(tmp_path, x_train=x, y_train=y + 1, classes=np.array(list("abcd")))
    s = load_data(str(path))
    assert s.num_classes == 4 and int(s.y_train.min()) == 1


def test_labels_beyond_the_classes_array(tmp_path):
    x, y = arrays(12)
    path = npz_file(tmp_path, x_train=x, y_train=y, classes=np.array(["a", "b"]))
    assert "classes array names only 2 classes" in data_error(path)


@pytest.mark.parametrize(
    "outputs, classes, expected",
    [
        (100, 10, "model has 100 outputs, the data's labels use 10 classes"),
        (10, 10, None),
        (5, 10, None),  # fewer outputs than classes: the scan's own error
    ],
)
def test_class_count_note(outputs, classes, expected):
    note = class_count_note(outputs, classes)
    assert note == expected if expected is None else note.startswith(expected)
