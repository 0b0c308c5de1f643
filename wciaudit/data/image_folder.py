"""ImageFolder trees ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (or ``DIR/val``),
decoded with the model's timm eval transform, without normalisation."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from .arrays import check_size, one_line
from .splits import SPLIT_NAMES, LoadOptions, Splits, assemble, subset_indices, subset_words
from .transform import image_transform, range_words, to_range

_IMAGE_WORKERS = 8  # threads decoding ImageFolder files; PIL releases the GIL while decoding

Files = list[tuple[str, int]]


def _pil_loader(mode: str) -> Callable[[str], Any]:
    def load(path: str) -> Any:
        from PIL import Image

        with open(path, "rb") as fh:
            image = Image.open(fh)
            return image.convert(mode)

    return load


def _open_splits(root: Path, mode: str) -> tuple[dict[str, Any], dict[str, int], str]:
    """torchvision ImageFolders of the present splits, the train split's class-to-index
    map (shared by both splits), and the test folder's name (``test`` or ``val``)."""
    from torchvision.datasets import ImageFolder

    test_name = "test" if (root / "test").is_dir() else "val"
    folders = {"train": root / "train", "test": root / test_name}
    present = [s for s in SPLIT_NAMES if folders[s].is_dir()]
    if not present:
        raise DataError(
            f"{root} has no train/, test/ or val/ folder; an ImageFolder dataset is laid out "
            "as DIR/train/<class>/*.png and DIR/test/<class>/*.png (or DIR/val/...)"
        )
    found = {}
    for split in present:
        try:
            found[split] = ImageFolder(str(folders[split]), loader=_pil_loader(mode))
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"{folders[split]}: {one_line(exc)}") from None
    reference = found["train"] if "train" in found else found["test"]
    class_to_idx = dict(reference.class_to_idx)
    if "train" in found and "test" in found:
        extra = sorted(set(found["test"].classes) - set(class_to_idx))
        if extra:
            raise DataError(
                f"{folders['test']} has classes that {folders['train']} lacks: "
                f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}; "
                "the test classes must be a subset of the train classes"
            )
    return found, class_to_idx, test_name


def _choose_files(
    found: dict[str, Any], class_to_idx: dict[str, int], opts: LoadOptions
) -> tuple[dict[str, Files], dict[str, int]]:
    """The (path, label) pairs kept in each split (a stratified subset) and the totals."""
    files: dict[str, Files] = {}
    totals: dict[str, int] = {}
    for split, ds in found.items():
        samples = [(p, class_to_idx[ds.classes[t]]) for p, t in ds.samples]
        totals[split] = len(samples)
        y = torch.tensor([t for _, t in samples], dtype=torch.int64)
        index = subset_indices(y, opts.samples(split), opts.subset_seed(split))
        files[split] = samples if index is None else [samples[i] for i in index.tolist()]
    return files, totals


def _example_shape(input_size: Any, first: str) -> list[int]:
    """One example's shape: the model's input, or the first image's own size."""
    if input_size is not None:
        return [int(s) for s in input_size]
    try:
        from PIL import Image

        with Image.open(first) as image:
            return [3, image.height, image.width]
    except OSError as exc:
        raise DataError(f"cannot read image {first}: {one_line(exc)}") from None


def _decoder(
    transform: Callable[[Any], Any], mode: str, shape: list[int], first: str
) -> Callable[[tuple[str, int]], torch.Tensor]:
    """A function from a (path, label) pair to the image as float32 in [0, 1]."""
    loader = _pil_loader(mode)

    def decode(item: tuple[str, int]) -> torch.Tensor:
        path = item[0]
        try:
            x = transform(loader(path))
        except OSError as exc:
            raise DataError(f"cannot read image {path}: {one_line(exc)}") from None
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if list(x.shape) != shape:
            raise DataError(
                f"image {path} is {x.shape[1]}x{x.shape[2]} but {first} is "
                f"{shape[1]}x{shape[2]}; without a model input size all images must be the "
                "same size"
            )
        return x

    return decode


def load_image_folder(
    root: Path, data_config: dict[str, Any] | None, opts: LoadOptions, *, name: str
) -> Splits:
    """Decode an ImageFolder tree into :class:`Splits` (values mapped from [0, 1]).

    Args:
        root: the folder holding ``train/`` and ``test/`` (or ``val/``).
        data_config: timm data config of the model; without an ``input_size`` images are
            read as RGB at their own size, which must then be the same for all of them.
        opts: data range, subset sizes and seed, size limit.
        name: ``Splits.name``.
    """
    transform, channels = image_transform(data_config)
    if channels not in (None, 1, 3):
        raise DataError(f"images can be read with 1 or 3 channels, the model wants {channels}")
    mode = "L" if channels == 1 else "RGB"
    found, class_to_idx, test_name = _open_splits(root, mode)
    files, totals = _choose_files(found, class_to_idx, opts)
    present = list(files)
    first = files[present[0]][0][0]
    shape = _example_shape(None if channels is None else data_config["input_size"], first)
    check_size(str(root), [(len(files[s]), shape) for s in present], opts.max_bytes)

    decode = _decoder(transform, mode, shape, first)
    parts = {}
    workers = max(1, min(_IMAGE_WORKERS, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for split in present:
            x = torch.stack(list(pool.map(decode, files[split])))
            y = torch.tensor([t for _, t in files[split]], dtype=torch.int64)
            parts[split] = (to_range(x, (0.0, 1.0), opts.lo, opts.hi), y, totals[split])

    how = "images at their own size"
    if channels is not None:
        how = "model eval transform (timm, no normalisation)"
    sizes = ", ".join(
        f"{'train' if s == 'train' else test_name} {subset_words(len(files[s]), totals[s])}"
        for s in present
    )
    source = f"ImageFolder {root}: {sizes}; {how}; {range_words((0.0, 1.0), opts.lo, opts.hi)}"
    return assemble(name, parts, num_classes=len(class_to_idx), source=source, opts=opts)
