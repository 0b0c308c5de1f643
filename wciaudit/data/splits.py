"""The :class:`Splits` record, the loading options, and stratified subset choice."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

SPLIT_NAMES = ("train", "test")


@dataclass
class Splits:
    """A train and a test split as float32 tensors in [lo, hi], with where they came from.

    Attributes:
        name: short dataset name, e.g. ``"digits"``, ``"cifar10"``, ``"npz:file.npz"``.
        x_train: float32 inputs, shape (N, C, H, W) for images or (N, ...) for npz data,
            values in [lo, hi]; ``None`` when the source has no train split.
        y_train: int64 class labels, shape (N,).
        x_test: as ``x_train``, for the test split.
        y_test: as ``y_train``, for the test split.
        num_classes: number of classes (labels are 0 .. num_classes - 1).
        source: one sentence saying where the data came from and how it was scaled.
        n_train_total: train size before subsetting (``None`` without a train split).
        n_test_total: test size before subsetting (``None`` without a test split).
        lo: lower end of the data range.
        hi: upper end of the data range.
        notes: one line for each change made to the layout of the data (e.g. a channel
            axis moved), for the scan to record and show; also part of ``source``.
    """

    name: str
    x_train: torch.Tensor | None
    y_train: torch.Tensor | None
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    num_classes: int
    source: str
    n_train_total: int | None
    n_test_total: int | None
    lo: float = 0.0
    hi: float = 1.0
    notes: tuple[str, ...] = field(default=())

    @property
    def input_shape(self) -> list[int]:
        """Per-example shape, e.g. ``[1, 8, 8]`` (taken from whichever split exists)."""
        x = self.x_train if self.x_train is not None else self.x_test
        return [] if x is None else [int(s) for s in x.shape[1:]]

    @property
    def has_train(self) -> bool:
        """Whether a train split is present."""
        return self.x_train is not None

    @property
    def has_test(self) -> bool:
        """Whether a test split is present."""
        return self.x_test is not None


@dataclass(frozen=True)
class LoadOptions:
    """What every source needs besides its location (validated by ``load_data``)."""

    lo: float
    hi: float
    train_samples: int | None
    test_samples: int | None
    seed: int
    max_bytes: int

    def samples(self, split: str) -> int | None:
        """The subset size asked for ``split`` (``"train"`` or ``"test"``)."""
        return self.train_samples if split == "train" else self.test_samples

    def subset_seed(self, split: str) -> int:
        """``seed`` for the train subset, ``seed + 1`` for the test subset."""
        return self.seed + SPLIT_NAMES.index(split)


def assemble(
    name: str,
    parts: dict[str, tuple[torch.Tensor, torch.Tensor, int]],
    *,
    num_classes: int,
    source: str,
    opts: LoadOptions,
    notes: tuple[str, ...] = (),
) -> Splits:
    """Build :class:`Splits` from ``{split: (x, y, total before subsetting)}``."""

    def part(split: str, i: int):
        return parts[split][i] if split in parts else None

    return Splits(
        name=name,
        x_train=part("train", 0),
        y_train=part("train", 1),
        x_test=part("test", 0),
        y_test=part("test", 1),
        num_classes=num_classes,
        source=source,
        n_train_total=part("train", 2),
        n_test_total=part("test", 2),
        lo=opts.lo,
        hi=opts.hi,
        notes=notes,
    )


def stratified_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Pick ``n`` indices of ``y`` so that every class keeps its share (seeded).

    Class c with ``count_c`` of the N labels gets ``floor(n * count_c / N)`` examples, and
    the ``n - sum(floor(...))`` left over go one each to the classes with the largest
    remainders (ties to the smaller label), so the total is exactly ``n`` and every class
    is within 1 of its proportional share. Within a class the examples are a uniformly
    random choice from a local ``torch.Generator`` seeded with ``seed``: the same
    ``(y, n, seed)`` gives the same indices, and torch's global seed is untouched.

    Args:
        y: integer labels, shape (N,).
        n: number of indices wanted; ``n >= N`` keeps all of them.
        seed: seed of the random choice within each class.

    Returns:
        int64 indices into ``y``, sorted ascending, shape (min(n, N),).

    Raises:
        ValueError: if ``n`` is negative or ``y`` is not one-dimensional.

    Example:
        >>> y = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
        >>> torch.bincount(y[stratified_subset(y, 5, seed=0)]).tolist()
        [3, 2]
    """
    if y.dim() != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {list(y.shape)}")
    if n < 0:
        raise ValueError(f"the subset size must be non-negative, got {n}")
    total = int(y.numel())
    if n >= total:
        return torch.arange(total, dtype=torch.int64)
    classes, counts = torch.unique(y, sorted=True, return_counts=True)
    exact = [n * int(c) / total for c in counts]
    quota = [math.floor(q) for q in exact]
    left = n - sum(quota)
    # stable sort on the remainder: equal remainders go to the smaller label first
    by_remainder = sorted(range(len(exact)), key=lambda i: -(exact[i] - quota[i]))
    for i in by_remainder[:left]:
        quota[i] += 1
    generator = torch.Generator().manual_seed(int(seed))
    chosen = []
    for cls, k in zip(classes.tolist(), quota, strict=True):
        members = torch.nonzero(y == cls, as_tuple=False).flatten()
        order = torch.randperm(members.numel(), generator=generator)
        chosen.append(members[order[:k]])
    return torch.sort(torch.cat(chosen)).values.to(torch.int64)


def subset_indices(y: torch.Tensor, n: int | None, seed: int) -> torch.Tensor | None:
    """Indices of the stratified subset, or ``None`` when the whole split is kept."""
    if n is None or n >= y.numel():
        return None
    return stratified_subset(y, n, seed)


def subset_words(kept: int, total: int) -> str:
    """``"100"`` or ``"40 of 100 (stratified subset)"``."""
    return f"{total}" if kept == total else f"{kept} of {total} (stratified subset)"
