"""Checkpoint formats -> model + provenance, and the refusals (wciaudit.checkpoints.loader)."""

from __future__ import annotations

import hashlib
import json
import socket
import textwrap
import uuid
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from torch import nn

from wciaudit.checkpoints import LoadedCheckpoint, load_checkpoint
from wciaudit.errors import CheckpointError, ConfigError

CUSTOM_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class DigitsCNN(nn.Module):
        def __init__(self, num_classes=10, width=4):
            super().__init__()
            self.conv = nn.Conv2d(1, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.fc = nn.Linear(width * 64, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x)))
            return self.fc(x.flatten(1))


    NotAModule = dict
    """
)


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=10, in_chans=1).eval()


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "test_vit", num_classes=10, in_chans=1, img_size=8, patch_size=2
    ).eval()


def _custom(tmp_path: Path, width: int = 4) -> tuple[Path, nn.Module]:
    file = tmp_path / "models.py"
    file.write_text(CUSTOM_SOURCE)
    namespace: dict = {}
    exec(compile(CUSTOM_SOURCE, str(file), "exec"), namespace)
    torch.manual_seed(0)
    net = namespace["DigitsCNN"](num_classes=10, width=width).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return file, net


def _x() -> torch.Tensor:
    return torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _assert_same(loaded: LoadedCheckpoint, net: nn.Module) -> None:
    assert not loaded.model.training
    assert all(
        p.dtype == torch.float32 and p.device.type == "cpu" for p in loaded.model.parameters()
    )
    with torch.no_grad():
        assert torch.equal(loaded.model(_x()), net(_x()))


def _save_st(path: Path, net: nn.Module, **metadata: str) -> Path:
    safetensors.torch.save_file(net.state_dict(), str(path), metadata=metadata or None)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _error(exc_type: type[Exception], *args, **kwargs) -> str:
    with pytest.raises(exc_type) as info:
        load_checkpoint(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and message
    return message


# --- round trips ------------------------------------------------------------------------


def test_safetensors_with_metadata_arch(tmp_path: Path) -> None:
    net = _resnet()
    path = _save_st(
        tmp_path / "r.safetensors",
        net,
        arch="test_resnet",
        arch_args=json.dumps({"in_chans": 1}),
        dataset="digits",
        mean="[0.25]",
        std="[0.5]",
        input_size="[1, 8, 8]",
    )
    loaded = load_checkpoint(path)
    _assert_same(loaded, net)
    info = loaded.info
    assert (info.format, info.arch, info.num_classes) == ("safetensors", "test_resnet", 10)
    assert info.sha256 == _sha(path)
    assert info.num_params == sum(p.numel() for p in net.parameters())
    assert (info.mean, info.std, info.input_size) == ([0.25], [0.5], [1, 8, 8])
    assert loaded.data_config["input_size"] == (1, 8, 8)
    assert loaded.data_config["mean"] == (0.25,)
    assert loaded.dataset_hint == "digits"
    assert info.metadata["dataset"] == "digits"


def test_safetensors_arch_override_and_inferred_shapes(tmp_path: Path) -> None:
    net = _resnet()
    path = _save_st(tmp_path / "r.safetensors", net)  # no metadata at all
    loaded = load_checkpoint(path, arch="test_resnet")
    _assert_same(loaded, net)
    # classes from the `fc` head, channels from the first conv; timm's own mean/std
    assert loaded.info.num_classes == 10
    assert loaded.data_config["input_size"][0] == 1
    assert loaded.info.mean == [0.5] and loaded.info.std == [0.5]
    assert loaded.dataset_hint is None
    user = load_checkpoint(path, arch="test_resnet", mean=[0.1], std=[0.2], num_classes=10)
    assert (user.info.mean, user.info.std) == ([0.1], [0.2])


def test_safetensors_vit_uses_model_input_size(tmp_path: Path) -> None:
    net = _vit()
    args = {"in_chans": 1, "img_size": 8, "patch_size": 2}
    path = _save_st(tmp_path / "v.safetensors", net, arch="test_vit", arch_args=json.dumps(args))
    loaded = load_checkpoint(path)
    _assert_same(loaded, net)
    assert loaded.info.num_classes == 10
    assert loaded.info.input_size == [1, 8, 8]  # not timm's nominal 160


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection (a hub download) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access while loading a checkpoint")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("safe", [True, False], ids=["model.safetensors", "pytorch_model.bin"])
def test_timm_folder(tmp_path: Path, safe: bool, no_network: None) -> None:
    from timm.models import save_for_hf

    net = _vit()
    folder = tmp_path / "vit"
    save_for_hf(
        net,
        str(folder),
        safe_serialization=safe,
        model_config={"dataset": "digits"},
        data_config={"mean": (0.2,), "std": (0.4,)},
    )
    loaded = load_checkpoint(folder)
    _assert_same(loaded, net)
    info = loaded.info
    assert (info.format, info.arch, info.num_classes) == ("timm-folder", "test_vit", 10)
    weights = folder / ("model.safetensors" if safe else "pytorch_model.bin")
    assert info.sha256 == _sha(weights)
    assert (info.mean, info.std, info.input_size) == ([0.2], [0.4], [1, 8, 8])
    assert loaded.dataset_hint == "digits"
    assert info.metadata["architecture"] == "test_vit"
    assert json.loads(info.metadata["pretrained_cfg.mean"]) == [0.2]


def test_custom_file_and_class(tmp_path: Path) -> None:
    file, net = _custom(tmp_path, width=3)
    path = _save_st(tmp_path / "c.safetensors", net, num_classes="10")
    loaded = load_checkpoint(path, arch=f"{file}:DigitsCNN", arch_args='{"width": 3}')
    _assert_same(loaded, net)
    info = loaded.info
    assert (info.arch, info.num_classes) == ("models.py:DigitsCNN", 10)
    assert info.mean is None and info.input_size is None  # nothing says, nothing invented


def test_custom_file_with_class_from_metadata(tmp_path: Path) -> None:
    file, net = _custom(tmp_path, width=3)
    path = _save_st(
        tmp_path / "c.safetensors",
        net,
        arch="DigitsCNN",
        arch_args='{"width": 3}',
        input_size="[1, 8, 8]",
    )
    with pytest.raises(CheckpointError, match="not a timm model.*--arch models.py:ClassName"):
        load_checkpoint(path)  # never imports what metadata names
    loaded = load_checkpoint(path, arch=str(file))
    _assert_same(loaded, net)
    assert loaded.info.arch == "models.py:DigitsCNN"
    assert loaded.info.input_size == [1, 8, 8]


def test_custom_importable_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, net = _custom(tmp_path)
    name = f"wciaudit_test_arch_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(CUSTOM_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "c.pt"
    torch.save(net.state_dict(), path)
    loaded = load_checkpoint(path, arch=f"{name}:DigitsCNN")
    _assert_same(loaded, net)
    assert loaded.info.arch == f"{name}:DigitsCNN"
    assert loaded.info.format == "pytorch"


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "ddp"])
def test_pytorch_state_dicts(tmp_path: Path, wrap: str) -> None:
    net = _resnet()
    sd = net.state_dict()
    obj = {
        "plain": sd,
        "state_dict": {"state_dict": sd, "epoch": 3, "dataset": "digits"},
        "model": {"model": sd, "optimizer_step": 10},
        "ddp": {f"module.{k}": v for k, v in sd.items()},
    }[wrap]
    path = tmp_path / "r.pth"
    torch.save(obj, path)
    loaded = load_checkpoint(path, arch="test_resnet")
    _assert_same(loaded, net)
    assert (loaded.info.format, loaded.info.num_classes) == ("pytorch", 10)
    assert loaded.info.sha256 == _sha(path)
    if wrap == "state_dict":
        assert loaded.dataset_hint == "digits" and loaded.info.metadata["epoch"] == "3"


def test_tied_weights_saved_once(tmp_path: Path) -> None:
    file = tmp_path / "tied.py"
    file.write_text(
        textwrap.dedent(
            """
            from torch import nn


            class Tied(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.embed = nn.Linear(4, 4, bias=False)
                    self.out = nn.Linear(4, 4, bias=False)
                    self.out.weight = self.embed.weight

                def forward(self, x):
                    return self.out(self.embed(x.flatten(1)[:, :4]))
            """
        )
    )
    namespace: dict = {}
    exec(compile(file.read_text(), str(file), "exec"), namespace)
    torch.manual_seed(0)
    net = namespace["Tied"]().eval()
    path = tmp_path / "tied.safetensors"
    safetensors.torch.save_model(net, str(path))  # keeps one name for the shared tensor
    loaded = load_checkpoint(path, arch=f"{file}:Tied")
    _assert_same(loaded, net)
    assert loaded.info.num_params == 16


def test_pytorch_wrapper_bookkeeping_is_provenance_only(tmp_path: Path) -> None:
    net = _resnet()
    path = tmp_path / "r.pt"
    torch.save(
        {"model": net.state_dict(), "arch": "os.system", "num_classes": "ten", "dataset": "digits"},
        path,
    )
    loaded = load_checkpoint(path, arch="test_resnet")
    _assert_same(loaded, net)
    assert loaded.info.num_classes == 10 and loaded.dataset_hint == "digits"
    assert loaded.info.metadata["arch"] == "os.system"


def test_half_precision_weights_become_float32(tmp_path: Path) -> None:
    net = _resnet()
    path = tmp_path / "h.safetensors"
    safetensors.torch.save_file(
        {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()},
        str(path),
    )
    loaded = load_checkpoint(path, arch="test_resnet")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())


# --- refusing to run code ---------------------------------------------------------------


class _Payload:
    """Unpickling this (unsafely) creates a file: the marker of executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_unsafe_pickle_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _resnet().state_dict(), "x": _Payload(marker)}, path)
    assert not marker.exists()
    message = _error(CheckpointError, path, arch="test_resnet")
    assert "weights-only" in message and "open" in message
    assert not marker.exists()


def test_metadata_never_imports_modules(tmp_path: Path) -> None:
    file, net = _custom(tmp_path)
    for bad in ("os.system", "not an identifier!", "__import__('os')"):
        path = _save_st(tmp_path / "c.safetensors", net, arch=bad)
        message = _error(CheckpointError, path, arch=str(file))
        assert "class name" in message or "no class" in message
    path = _save_st(tmp_path / "c.safetensors", net, arch="NotAModule")
    assert "nn.Module" in _error(CheckpointError, path, arch=str(file))
    path = _save_st(tmp_path / "c.safetensors", net, arch="nn")  # a name the file imports
    assert "not a subclass" in _error(CheckpointError, path, arch=str(file))


# --- errors -----------------------------------------------------------------------------


def test_missing_and_empty_and_garbage_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    assert _error(CheckpointError, missing) == f"checkpoint not found: {missing}"
    for suffix in (".safetensors", ".pt"):
        empty = tmp_path / f"empty{suffix}"
        empty.write_bytes(b"")
        assert "empty" in _error(CheckpointError, empty, arch="test_resnet")
        garbage = tmp_path / f"garbage{suffix}"
        garbage.write_bytes(
            torch.randint(
                0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
            )
            .numpy()
            .tobytes()
        )
        message = _error(CheckpointError, garbage, arch="test_resnet")
        assert str(garbage) in message and "not a valid" in message
    other = tmp_path / "model.onnx"
    other.write_bytes(b"x")
    assert ".safetensors" in _error(CheckpointError, other)
    folder = tmp_path / "folder"
    folder.mkdir()
    assert "config.json" in _error(CheckpointError, folder)


def test_truncated_safetensors(tmp_path: Path) -> None:
    path = _save_st(tmp_path / "r.safetensors", _resnet(), arch="test_resnet")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert f"not a valid safetensors file: {path}" in _error(CheckpointError, path)


def test_bad_metadata_header_does_not_crash(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    header = b'{"__metadata__": {"arch": "\xff\xfe"}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    assert "not a valid safetensors file" in _error(CheckpointError, path)
    huge = _save_st(
        tmp_path / "huge.safetensors", _resnet(), arch="test_resnet", note="x" * 100_000
    )
    assert len(load_checkpoint(huge).info.metadata["note"]) <= 2000


def test_unknown_and_missing_arch(tmp_path: Path) -> None:
    net = _resnet()
    path = _save_st(tmp_path / "r.safetensors", net)
    assert "--arch" in _error(CheckpointError, path)
    assert "not_a_model_xyz" in _error(CheckpointError, path, arch="not_a_model_xyz")
    pt = tmp_path / "r.pt"
    torch.save(net.state_dict(), pt)
    assert "--arch" in _error(CheckpointError, pt)
    assert "not found" in _error(CheckpointError, pt, arch=str(tmp_path / "absent.py:Net"))
    assert "ClassName" in _error(ConfigError, pt, arch="models.py:1bad")


def test_key_mismatch_names_keys(tmp_path: Path) -> None:
    sd = _resnet().state_dict()
    sd["head.weight"] = sd.pop("fc.weight")
    sd["head.bias"] = sd.pop("fc.bias")
    path = tmp_path / "r.safetensors"
    safetensors.torch.save_file(sd, str(path))
    message = _error(CheckpointError, path, arch="test_resnet", num_classes=10)
    assert "state_dict does not fit arch 'test_resnet'" in message
    assert "missing keys fc.weight, fc.bias" in message
    assert "unexpected keys head." in message and "head.weight" in message


def test_shape_mismatch_names_key_and_shapes(tmp_path: Path) -> None:
    path = _save_st(tmp_path / "r.safetensors", _resnet(), arch="test_resnet")
    message = _error(CheckpointError, path, num_classes=7)
    assert "fc.weight" in message and "[10," in message and "[7," in message


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    net = _resnet()
    sd = net.state_dict()
    sd["fc.bias"] = sd["fc.bias"].clone()
    sd["fc.bias"][3] = float("nan")
    path = tmp_path / "r.safetensors"
    safetensors.torch.save_file(sd, str(path), metadata={"arch": "test_resnet"})
    message = _error(CheckpointError, path)
    assert "fc.bias" in message and "NaN" in message


def test_bad_options(tmp_path: Path) -> None:
    path = _save_st(tmp_path / "r.safetensors", _resnet(), arch="test_resnet")
    assert "--arch-args is not valid JSON" in _error(ConfigError, path, arch_args="{in_chans: 1")
    assert "JSON object" in _error(ConfigError, path, arch_args="[1, 2]")
    assert "num_classes" in _error(ConfigError, path, num_classes=0)
    assert "std" in _error(ConfigError, path, mean=[0.5], std=[0.0])
    assert "pretrained" in _error(CheckpointError, path, arch_args={"pretrained": True})
    assert "cannot build" in _error(CheckpointError, path, arch_args={"no_such_option": 1})
    bad_meta = _save_st(
        tmp_path / "m.safetensors", _resnet(), arch="test_resnet", arch_args="{oops"
    )
    assert "arch_args" in _error(CheckpointError, bad_meta)
