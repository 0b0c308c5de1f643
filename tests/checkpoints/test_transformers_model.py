"""transformers save_pretrained folders: built offline by transformers, weights under its
names, preprocessing from the processor config with its source, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wciaudit.checkpoints import load_checkpoint
from wciaudit.checkpoints.precedence import FLAG, TRANSFORMERS_CONFIG
from wciaudit.checkpoints.transformers_model import is_transformers_config
from wciaudit.errors import CheckpointError

transformers = pytest.importorskip(
    "transformers", reason="the transformers extra is not installed (wciaudit[transformers])"
)


def _tiny(kind: str) -> torch.nn.Module:
    """A random-init image classifier of each family, 1x8x8 inputs, 10 classes."""
    torch.manual_seed(0)
    if kind == "vit":
        config = transformers.ViTConfig(
            image_size=8,
            patch_size=4,
            num_channels=1,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=10,
        )
        return transformers.ViTForImageClassification(config)
    if kind == "convnext":
        config = transformers.ConvNextConfig(
            num_channels=1,
            hidden_sizes=[8, 16],
            depths=[1, 1],
            num_stages=2,
            patch_size=2,
            num_labels=10,
        )
        return transformers.ConvNextForImageClassification(config)
    if kind == "resnet":
        config = transformers.ResNetConfig(
            num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10
        )
        return transformers.ResNetForImageClassification(config)
    config = transformers.SwinConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        embed_dim=8,
        depths=[1],
        num_heads=[2],
        window_size=2,
        num_labels=10,
    )
    return transformers.SwinForImageClassification(config)


def _save(model: torch.nn.Module, folder: Path, processor: dict | None) -> Path:
    model.save_pretrained(str(folder))
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


VIT_PROCESSOR = {
    "image_processor_type": "ViTImageProcessor",
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5],
    "image_std": [0.25],
    "resample": 3,
    "size": {"height": 8, "width": 8},
}


@pytest.mark.parametrize("kind", ["vit", "convnext", "resnet", "swin"])
def test_folder_gives_the_same_logits_under_transformers_names(tmp_path, kind):
    hf = _tiny(kind).eval()
    folder = _save(hf, tmp_path / kind, {"image_mean": [0.5], "image_std": [0.25]})
    loaded = load_checkpoint(folder)
    assert loaded.info.format == "transformers-folder"
    assert loaded.info.arch == type(hf).__name__
    assert loaded.info.num_classes == 10
    # every weight under the name transformers gives it, with the saved values
    ours = dict(loaded.model.named_parameters())
    theirs = dict(hf.named_parameters())
    assert list(ours) == list(theirs)
    for name, p in theirs.items():
        assert torch.equal(ours[name], p), name
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), hf(pixel_values=x).logits)
    assert not loaded.model.training and not loaded.model.hf_model.training


def test_preprocessing_from_the_processor_config_with_its_source(tmp_path):
    folder = _save(_tiny("vit"), tmp_path / "vit", VIT_PROCESSOR)
    loaded = load_checkpoint(folder)
    assert loaded.info.input_size == [1, 8, 8]
    assert (loaded.info.mean, loaded.info.std) == ([0.5], [0.25])
    assert loaded.data_config["interpolation"] == "bicubic"
    assert {k: loaded.sources[k] for k in ("input_size", "mean", "std")} == dict.fromkeys(
        ("input_size", "mean", "std"), TRANSFORMERS_CONFIG
    )
    flagged = load_checkpoint(folder, mean=[0.1], std=[0.2])
    assert (flagged.info.mean, flagged.sources["mean"]) == ([0.1], FLAG)


def test_processor_size_forms_and_no_normalisation(tmp_path):
    """ConvNeXt/ResNet processors say ``shortest_edge`` (then a square crop); a processor
    with ``do_normalize: false`` gives no mean/std; without a processor the size comes
    from the model config's ``image_size`` where it has one."""
    convnext = _save(
        _tiny("convnext"),
        tmp_path / "c",
        {"size": {"shortest_edge": 8}, "crop_pct": 0.875, "do_normalize": False},
    )
    loaded = load_checkpoint(convnext)
    assert loaded.info.input_size == [1, 8, 8] and loaded.info.mean is None
    assert loaded.data_config["crop_pct"] == 0.875
    bare = _save(_tiny("vit"), tmp_path / "v", None)
    loaded = load_checkpoint(bare)
    assert loaded.info.input_size == [1, 8, 8] and loaded.info.mean is None


def test_not_confused_with_a_timm_folder(tmp_path):
    assert is_transformers_config({"architectures": ["ViTForImageClassification"]})
    assert is_transformers_config({"model_type": "vit"})
    assert not is_transformers_config({"architecture": "resnet18", "model_type": "x"})
    timm = pytest.importorskip("timm")
    from timm.models import save_for_hf

    net = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    save_for_hf(net, str(tmp_path / "t"), model_config={"num_classes": 10})
    assert load_checkpoint(tmp_path / "t").info.format == "timm-folder"


def test_weights_that_do_not_fit_are_refused(tmp_path):
    folder = _save(_tiny("vit"), tmp_path / "vit", VIT_PROCESSOR)
    with pytest.raises(CheckpointError, match="do not fit ViTForImageClassification: mis-shaped"):
        load_checkpoint(folder, num_classes=4)
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = 32
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(folder)
    assert "\n" not in str(err.value)


def test_remote_code_and_bad_processor_are_refused(tmp_path):
    folder = _save(_tiny("vit"), tmp_path / "vit", {"image_mean": [0.5], "image_std": [0.0]})
    with pytest.raises(CheckpointError, match="image_std must be a list of positive numbers"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="never runs code"):
        load_checkpoint(folder, arch_args={"trust_remote_code": True})
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="mystery", auto_map={"AutoConfig": "evil.Config"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="cannot build the transformers image classifier"):
        load_checkpoint(folder)


def test_without_transformers_the_message_names_the_extra(tmp_path, monkeypatch):
    import builtins

    folder = _save(_tiny("vit"), tmp_path / "vit", VIT_PROCESSOR)
    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(CheckpointError, match=r"wciaudit\[transformers\]") as err:
        load_checkpoint(folder)
    assert "ViTForImageClassification" in str(err.value)


def test_scan_of_a_vit_folder_from_the_command_line(tmp_path):
    from cli_runner import TINY_SCAN, invoke_in

    folder = _save(_tiny("vit"), tmp_path / "my-vit", VIT_PROCESSOR)
    g = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(
        data,
        x_train=g.random((40, 1, 8, 8)).astype("float32"),
        y_train=g.integers(0, 10, 40),
        x_test=g.random((40, 1, 8, 8)).astype("float32"),
        y_test=g.integers(0, 10, 40),
    )
    code, stdout, stderr = invoke_in(
        tmp_path, ["scan", str(folder), "--data", str(data), "--eps", "0.05", *TINY_SCAN]
    )
    assert code == 0, stdout + stderr
    out = json.loads((tmp_path / "my-vit.wciaudit.json").read_text())
    assert out["checkpoint"]["format"] == "transformers-folder"
    assert out["config"]["preprocessing_source"]["mean"] == TRANSFORMERS_CONFIG
    names = [layer["name"] for layer in out["layers"]]
    assert "classifier.weight" in names and names[0].startswith("vit.")
    assert out["wci"] is not None and out["wci_se"] is not None
