"""`wciaudit scan` through typer's CliRunner and as a real subprocess (SPEC: exit codes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_runner import TINY_SCAN, console_in, invoke_in
from conftest import CNN, CNN_ARCH
from typer.testing import CliRunner

from wciaudit.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
RESNET = ROOT / "sample_models" / "digits_resnet_pgd.safetensors"

runner = CliRunner()


def _run(args: list[str], cwd: Path) -> tuple[int, str, str]:
    return invoke_in(cwd, args)


@pytest.mark.slow
def test_scan_writes_schema_v1_json_named_after_the_checkpoint(sample_cnn_scan) -> None:  # noqa: ANN001
    assert sample_cnn_scan.proc.returncode == 0, sample_cnn_scan.proc.stderr
    files = list(sample_cnn_scan.folder.iterdir())
    assert [f.name for f in files] == ["digits_cnn.wciaudit.json"]
    d = json.loads(files[0].read_text())
    assert d["schema_version"] == 1 and d["checkpoint"]["arch"] == "digits_cnn.py:DigitsCNN"
    assert d["dataset"]["n_train"] == 60 and d["config"]["eps"] == pytest.approx(0.1)
    assert all(la["method"] == "exact-ggn" for la in d["layers"])


def test_bare_command_uses_the_dataset_the_checkpoint_names(tmp_path: Path) -> None:
    code, out, err = _run(["scan", str(RESNET), *TINY_SCAN, "--json", "r.json"], tmp_path)
    assert code == 0, err
    assert "metadata names dataset 'digits'" in " ".join(out.split())
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["dataset"]["name"] == "digits" and d["wci"] > 0


def test_weights_only(tmp_path: Path) -> None:
    code, _, err = _run(["scan", str(RESNET), "--weights-only", "--json", "w.json", "-q"], tmp_path)
    assert code == 0, err
    d = json.loads((tmp_path / "w.json").read_text())
    assert d["wci"] is None and d["metrics"]["robust_acc_train"] is None and len(d["layers"]) == 16


def test_existing_json_is_replaced_atomically(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    code, _, err = _run(
        ["scan", str(RESNET), "--weights-only", "--json", str(target), "-q"], tmp_path
    )
    assert code == 0, err
    assert json.loads(target.read_text())["schema_version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def _bad_npz(tmp_path: Path, name: str, **arrays: np.ndarray) -> Path:
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    return path


def _cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(CNN.read_bytes()[:500])
    notckpt = tmp_path / "notes.safetensors"
    notckpt.write_text("hello")
    x = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    y = np.arange(20) % 10
    return {
        "missing file": (["scan", "nope.safetensors"], "not found"),
        "not a checkpoint": (["scan", str(notckpt)], "safetensors"),
        "truncated safetensors": (["scan", str(truncated)], "safetensors"),
        "wrong arch": (["scan", str(CNN), "--arch", "test_vit"], "test_vit"),
        "unknown arch": (["scan", str(CNN), "--arch", "no_such_model_xyz"], "no_such_model_xyz"),
        "shape mismatch": (
            ["scan", str(CNN), "--arch", str(CNN_ARCH), "--arch-args", '{"width": 8}'],
            "shape",
        ),
        "data wrong shape": (
            [
                "scan",
                str(CNN),
                "--arch",
                str(CNN_ARCH),
                "--data",
                str(
                    _bad_npz(
                        tmp_path, "shape", x_train=np.zeros((20, 3, 5, 5), np.float32), y_train=y
                    )
                ),
            ],
            "shape",
        ),
        "rgb channels-last on a grey model": (
            [
                "scan",
                str(CNN),
                "--arch",
                str(CNN_ARCH),
                "--data",
                str(
                    _bad_npz(
                        tmp_path, "rgb", x_train=np.zeros((20, 8, 8, 3), np.float32), y_train=y
                    )
                ),
            ],
            "shape (8, 8, 3), channels-last with 3 channels, but the model's first layer",
        ),
        "data out of range": (
            [
                "scan",
                str(CNN),
                "--arch",
                str(CNN_ARCH),
                "--data",
                str(_bad_npz(tmp_path, "range", x_train=x * 3, y_train=y)),
            ],
            "range",
        ),
        "labels beyond the model": (
            [
                "scan",
                str(CNN),
                "--arch",
                str(CNN_ARCH),
                "--data",
                str(_bad_npz(tmp_path, "labels", x_train=x, y_train=y + 10)),
            ],
            "label",
        ),
        "eps out of range": (["scan", str(CNN), "--arch", str(CNN_ARCH), "--eps", "2"], "eps"),
        "eps not a number": (["scan", str(CNN), "--arch", str(CNN_ARCH), "--eps", "abc"], "eps"),
        "unknown device": (
            ["scan", str(CNN), "--arch", str(CNN_ARCH), "--device", "tpu"],
            "device",
        ),
        "cuda absent": (["scan", str(CNN), "--arch", str(CNN_ARCH), "--device", "cuda:0"], "cuda"),
        "bad arch args": (
            ["scan", str(CNN), "--arch", str(CNN_ARCH), "--arch-args", "{nope"],
            "arch-args",
        ),
        "unknown data form": (
            ["scan", str(CNN), "--arch", str(CNN_ARCH), "--data", "imagenet"],
            "accepted forms",
        ),
        "bad option value": (["scan", str(CNN), "--steps", "many"], "steps"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "not a checkpoint",
        "truncated safetensors",
        "wrong arch",
        "unknown arch",
        "shape mismatch",
        "data wrong shape",
        "rgb channels-last on a grey model",
        "data out of range",
        "labels beyond the model",
        "eps out of range",
        "eps not a number",
        "unknown device",
        "cuda absent",
        "bad arch args",
        "unknown data form",
        "bad option value",
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_output(case: str, tmp_path: Path) -> None:
    if case == "cuda absent":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
    args, needle = _cases(tmp_path)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = _run(
        [*args, "--json", str(out_dir / "r.json")] if case != "bad option value" else args, out_dir
    )
    assert code == 2, (case, out, err)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    if case != "bad option value":  # click's own usage errors are a short block
        assert len(lines) == 1, err
    assert needle.lower() in err.lower(), err
    assert list(out_dir.iterdir()) == []


@pytest.mark.slow
def test_real_subprocess_exit_codes(sample_cnn_scan, tmp_path: Path) -> None:  # noqa: ANN001
    ok = sample_cnn_scan.proc
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "wciaudit", "scan", str(tmp_path / "missing.safetensors")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_help_lists_the_choices() -> None:
    res = runner.invoke(app, ["scan", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.stdout.split())
    for word in (
        "pgd",
        "fgsm",
        "hutchinson",
        "--hessian-samples",
        "--max-probes",
        "--weights-only",
    ):
        assert word in text


def test_usage_errors_are_one_line_from_the_console_script(tmp_path: Path) -> None:
    """Through ``main()``, the console entry point, in this process: a real process
    around it is tested by test_help's bare ``scan`` and the missing file above."""
    for args in (
        ["scan", str(CNN), "--steps", "many"],
        ["scan", str(CNN), "--json", str(tmp_path)],
        ["nosuchcommand"],
    ):
        code, out, err = console_in(tmp_path, args)
        assert code == 2, (args, err)
        assert err.startswith("wciaudit: error:") and err.count("\n") == 1, err
        assert out == ""
