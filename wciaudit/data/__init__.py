"""Dataset sources -> tensors in the data range [lo, hi] (SPEC: "The model under audit").

A dataset is named by one ``spec``:

- ``sample`` or ``digits``: the shipped UCI digits (8x8 grey, 1000 train / 797 test);
- ``path/file.npz``: arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` (either split
  may be absent) and optionally ``classes``; read without pickle (layout: docs/data.md);
- ``DIR``: an ImageFolder tree ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (or
  ``DIR/val/...``), decoded with the model's timm eval transform, without normalisation;
- ``cifar10:DIR`` / ``cifar100:DIR``: torchvision's CIFAR python batches under ``DIR``;
- from Python, a dict of the same arrays as numpy arrays or torch tensors.

Nothing is ever downloaded. Every failure is a :class:`~wciaudit.errors.DataError` with a
one-line message that names the file and the problem.

Modules: ``load`` (the entry point), ``npz``, ``image_folder``, ``cifar`` (the sources),
``arrays`` and ``labels`` (checks shared by array sources), ``layout`` (channels-first),
``transform`` (value ranges, timm's transform, resizing), ``splits`` (the record and
subset choice).

Example:
    >>> splits = load_data("sample", train_samples=100, test_samples=50)
    >>> splits.input_shape, len(splits.y_train), splits.n_train_total
    ([1, 8, 8], 100, 1000)
"""

from .labels import check_labels_fit, class_count_note
from .layout import to_channels_first
from .load import ACCEPTED_FORMS, SAMPLE_NAMES, load_data
from .splits import Splits, stratified_subset
from .transform import fit_to_model

__all__ = [
    "ACCEPTED_FORMS",
    "SAMPLE_NAMES",
    "Splits",
    "check_labels_fit",
    "class_count_note",
    "fit_to_model",
    "load_data",
    "stratified_subset",
    "to_channels_first",
]
