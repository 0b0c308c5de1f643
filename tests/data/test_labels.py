"""Tests of wciaudit.data.labels: labels 0..C-1, and the model-outputs note."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_files import arrays, both_splits, data_error, npz_file

from wciaudit.data import check_labels_fit, class_count_note, load_data
from wciaudit.errors import DataError


def test_labels_that_use_some_classes_are_loaded_as_they_are(tmp_path):
    # no model yet: 7..997 may be a subset of 1000 classes, 1..10 may be 10 of 11
    x, y = arrays(20, classes=10)
    s = load_data(str(npz_file(tmp_path, x_train=x, y_train=y * 110 + 7)))
    assert (int(s.y_train.min()), int(s.y_train.max())) == (7, 997) and s.num_classes == 998
    s = load_data(str(both_splits(tmp_path, y_train=np.full(30, 4), y_test=y[:12] % 3 + 4)))
    assert s.num_classes == 7 and int(s.y_test.min()) == 4


def test_a_subset_of_a_models_classes_fits_with_a_note():
    note = check_labels_fit([torch.tensor([7, 500]), torch.tensor([997])], 1000)
    assert note == (
        "model has 1000 outputs, the data's labels run 7..997; the attack and the loss use all 1000"
    )
    assert check_labels_fit([torch.tensor([0, 9])], 10) is None
    assert "use 10 classes" in check_labels_fit([torch.tensor([0, 9])], 100)


@pytest.mark.parametrize(
    "labels, outputs, shift",
    [
        ((1, 10), 10, "subtract 1"),  # one-based labels on a 10-class model
        ((7, 1006), 1000, "subtract 7"),  # shifted by 7: the range fits once shifted
        ((0, 10), 10, None),  # no shift makes 0..10 fit 10 classes
        ((2, 12), 10, None),  # 11 distinct values cannot fit 10 classes
    ],
)
def test_labels_beyond_the_models_outputs_say_whether_a_shift_fits(labels, outputs, shift):
    with pytest.raises(DataError) as info:
        check_labels_fit([torch.tensor(labels)], outputs)
    message = str(info.value)
    assert message.startswith(f"labels run {labels[0]}..{labels[1]} but the model has {outputs}")
    assert f"(classes 0..{outputs - 1})" in message
    if shift is None:
        assert "subtract" not in message
    else:
        assert message.endswith(f"wciaudit expects 0..C-1 — {shift} from the labels")


def test_a_classes_array_allows_labels_without_zero(tmp_path):
    x, y = arrays(12)
    path = npz_file(tmp_path, x_train=x, y_train=y + 1, classes=np.array(list("abcd")))
    s = load_data(str(path))
    assert s.num_classes == 4 and int(s.y_train.min()) == 1


def test_labels_beyond_the_classes_array(tmp_path):
    x, y = arrays(12)
    path = npz_file(tmp_path, x_train=x, y_train=y, classes=np.array(["a", "b"]))
    assert "classes array names only 2 classes" in data_error(path)
    path = npz_file(tmp_path, x_train=x, y_train=y + 1, classes=np.array(["a", "b", "c"]))
    assert data_error(path).endswith(
        "names only 3 classes; wciaudit expects 0..C-1 — subtract 1 from the labels"
    )


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
