"""Models on vectors (N, F), signals (N, C, L) and images (N, C, H, W) scan by default:
npz data of each shape loads, the checkpoint's ``input_size`` may be any shape, and the
gradient-masking checks run on each (Square with one-dimensional windows) or are
skipped with their reason, never failing the scan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from cli_runner import invoke_in
from torch import nn

from wciaudit import scan
from wciaudit.checkpoints import load_checkpoint
from wciaudit.config import LoadOptions
from wciaudit.data import Splits, load_data
from wciaudit.errors import CheckpointError, ConfigError

MODELS = """
from torch import nn

class Signals(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv1d(1, 4, 5), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))

class Vectors(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))

class Images(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
"""
#: class, one input's shape
CASES = {
    "vectors": ("Vectors", (12,)),
    "signals": ("Signals", (1, 40)),
    "images": ("Images", (1, 8, 8)),
}


def _arrays(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes whose inputs differ in level, inside [0, 1]."""
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.int64) % 3
    x = 0.5 * rng.random((n, *shape), dtype=np.float32) + 0.2 * y.reshape(-1, *[1] * len(shape))
    return x.astype(np.float32), y


def _trained(net: nn.Module, x: np.ndarray, y: np.ndarray) -> nn.Module:
    """A few full-batch steps, so that the attacks have a classifier to break (an
    untrained net is nearly constant: its few correct examples would stay robust and
    cost Square its whole query budget)."""
    torch.manual_seed(0)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    return net


def _case(tmp_path: Path, kind: str) -> tuple[Path, Path, Path]:
    """models.py, a checkpoint whose metadata names the input size, and npz data."""
    import importlib.util

    models = tmp_path / "models.py"
    models.write_text(MODELS)
    name, shape = CASES[kind]
    spec = importlib.util.spec_from_file_location("shape_models", models)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x_train, y_train = _arrays(48, shape, 0)
    x_test, y_test = _arrays(24, shape, 1)
    net = _trained(getattr(module, name)(), x_train, y_train)
    ckpt = tmp_path / f"{kind}.safetensors"
    meta = {"arch": name, "input_size": json.dumps(list(shape))}
    safetensors.torch.save_file(net.state_dict(), str(ckpt), metadata=meta)
    data = tmp_path / f"{kind}.npz"
    np.savez(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return models, ckpt, data


@pytest.mark.parametrize("known", [True, False], ids=["input-size-known", "unknown"])
@pytest.mark.parametrize("kind", ["vectors", "signals"])
def test_npz_loads_vectors_and_signals_as_they_are(tmp_path: Path, kind: str, known: bool) -> None:
    _, _, data = _case(tmp_path, kind)
    config = {"input_size": CASES[kind][1]} if known else None
    splits = load_data(str(data), data_config=config)
    assert splits.input_shape == list(CASES[kind][1])
    assert tuple(splits.x_train.shape) == (48, *CASES[kind][1])


@pytest.mark.parametrize("kind", list(CASES))
def test_metadata_input_size_of_any_shape(tmp_path: Path, kind: str) -> None:
    models, ckpt, _ = _case(tmp_path, kind)
    loaded = load_checkpoint(ckpt, arch=str(models))
    assert loaded.data_config["input_size"] == CASES[kind][1]


def test_input_size_refusals_say_what_is_allowed(tmp_path: Path) -> None:
    models, ckpt, _ = _case(tmp_path, "vectors")
    bad = tmp_path / "bad.safetensors"
    state = safetensors.torch.load_file(str(ckpt))
    safetensors.torch.save_file(state, str(bad), metadata={"input_size": "[0, 3]"})
    with pytest.raises(CheckpointError, match=r"\[F\] for vectors"):
        load_checkpoint(bad, arch=str(models) + ":Vectors")
    with pytest.raises(ConfigError, match=r"\(F,\) for vectors"):
        LoadOptions(input_size=())
    assert LoadOptions(input_size=[64]).input_size == (64,)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(CASES))
def test_default_scan_of_each_shape(tmp_path: Path, kind: str) -> None:
    models, ckpt, data = _case(tmp_path, kind)
    args = ["scan", str(ckpt), "--arch", str(models), "--data", str(data), "--eps", "0.1"]
    args += ["--steps", "2", "--hessian-samples", "16", "--masking-samples", "12", "-q"]
    code, _, err = invoke_in(tmp_path, args)
    assert code == 0, err
    result = json.loads((tmp_path / f"{kind}.wciaudit.json").read_text())
    assert result["dataset"]["input_shape"] == list(CASES[kind][1])
    checks = {c["name"]: c for c in result["attacks"]["masking"]["checks"]}
    assert checks["square-vs-whitebox"]["passed"] is not None  # adapted, not skipped
    assert result["wci"] is not None


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vectors", "signals"])
def test_l2_autoattack_runs_every_stage(tmp_path: Path, kind: str) -> None:
    models, ckpt, data = _case(tmp_path, kind)
    # an eps that breaks nearly every example before Square, whose 5000 queries per
    # example left robust would cost minutes
    args = ["scan", str(ckpt), "--arch", str(models), "--data", str(data), "--eps", "1.5"]
    args += ["--norm", "l2", "--attack", "autoattack", "--hessian-samples", "16"]
    args += ["--masking-samples", "12", "--test-samples", "12", "--train-samples", "24", "-q"]
    code, _, err = invoke_in(tmp_path, args)
    assert code == 0, err
    result = json.loads((tmp_path / f"{kind}.wciaudit.json").read_text())
    assert result["attacks"]["skipped"] == {}
    assert "square" in result["attacks"]["broken_by"]["test"]
    checks = {c["name"]: c for c in result["attacks"]["masking"]["checks"]}
    assert checks["square-vs-whitebox"]["passed"] is not None


@pytest.mark.slow
def test_autoattack_on_volumes_says_which_parts_ran() -> None:
    """Inputs Square has no window for (N, C, D, H, W): its stage and its masking check
    are skipped with the reason, and the rest of the scan runs."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 8, 3))
    x, y = (torch.as_tensor(a) for a in _arrays(36, (1, 4, 4, 4), 0))
    splits = Splits("volumes", x[:24], y[:24], x[24:], y[24:], 3, "volumes", 24, 12)
    result = scan(net, splits, eps=0.1, attack="autoattack", hessian_samples=12, masking_samples=12)
    reason = "Square Attack takes images (N, C, H, W), signals (N, C, L) or vectors (N, F)"
    assert result.attacks.skipped["square"].startswith(reason)
    assert "square" not in result.attacks.broken_by["test"]
    check = {c["name"]: c for c in result.attacks.masking["checks"]}["square-vs-whitebox"]
    assert check["passed"] is None and check["detail"].startswith("skipped: " + reason)
    notes = " ".join(result.notes)
    assert "autoattack ran apgd-ce, apgd-t, fab-t; square skipped: " + reason in notes
    assert "gradient-masking check square-vs-whitebox skipped" in notes
    assert result.wci is not None and not result.attacks.masking["flagged"]
