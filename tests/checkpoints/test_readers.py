"""What a file says (the record), its sha256, its epoch and the suffixes read."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

from wciaudit.checkpoints import (
    CHECKPOINT_SUFFIXES,
    file_sha256,
    load_checkpoint,
    read_checkpoint,
    read_epoch,
)
from wciaudit.errors import CheckpointError


def _resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=10, in_chans=1).eval()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_suffixes() -> None:
    assert CHECKPOINT_SUFFIXES == (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def test_the_record_says_what_the_metadata_says_and_cannot_change(tmp_path: Path) -> None:
    path = tmp_path / "r.safetensors"
    meta = {
        "arch": "test_resnet",
        "eps": "0.1",
        "norm": "l2",
        "input_size": "[1, 8, 8]",
        "mean": "[0.5]",
        "std": "[0.25]",
        "dataset": "digits",
    }
    safetensors.torch.save_file(_resnet().state_dict(), str(path), metadata=meta)
    record, state_dict = read_checkpoint(path)
    assert record.format == "safetensors" and record.sha256 == _sha(path)
    assert record.arch == "test_resnet" and record.eps == "0.1" and record.norm == "l2"
    assert record.input_size == (1, 8, 8) and record.mean == (0.5,) and record.std == (0.25,)
    assert record.dataset_hint == "digits" and set(record.tensor_names) == set(state_dict)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.eps = "0.2"  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.metadata["eps"] = "0.2"  # type: ignore[index]


def test_a_timm_folder_has_one_sha256_that_of_its_weights(tmp_path: Path) -> None:
    folder = tmp_path / "vit"
    timm.models.save_for_hf(_resnet(), str(folder), safe_serialization=True)
    weights = folder / "model.safetensors"
    assert file_sha256(folder) == _sha(weights) == file_sha256(weights)
    assert load_checkpoint(folder).info.sha256 == _sha(weights)
    with pytest.raises(CheckpointError):
        file_sha256(tmp_path / "missing.safetensors")


def test_read_epoch_from_each_format(tmp_path: Path) -> None:
    st = tmp_path / "a.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(st), metadata={"epoch": "7"})
    pt = tmp_path / "b.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 2.5}, pt)
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"epoch": 4}))
    bad = tmp_path / "d.safetensors"
    bad.write_bytes(b"not a safetensors file")
    nan = tmp_path / "e.pt"
    torch.save({"w": torch.zeros(1), "epoch": float("nan")}, nan)
    assert [read_epoch(p) for p in (st, pt, folder, bad, nan)] == [7.0, 2.5, 4.0, None, None]
