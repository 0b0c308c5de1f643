"""The terminal summary at 80 columns (CI logs, pipes): full layer names, no ellipsis,
file names printed literally, a weights-only scan without attack or data figures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import TINY_CNN_SCAN, child_env
from rich.console import Console

from wciaudit.cli.summary import SHOWN_LAYERS, print_summary
from wciaudit.result import AttackInfo, AuditResult, DatasetInfo, LayerResult, Metrics

ROOT = Path(__file__).resolve().parents[2]


# the sample CNN (with --arch): a child that loads it needs no timm (an import of ~3 s)
CNN = ROOT / "sample_models" / "digits_cnn.safetensors"


def _render(result: AuditResult, width: int = 80) -> str:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    print_summary(result, console)
    return console.export_text()


def _result(names: list[str], **layer: object) -> AuditResult:
    r = AuditResult(dataset=DatasetInfo(name="digits", n_train=40, n_test=40, reason="asked"))
    r.layers = [
        LayerResult(
            name=n,
            shape=[8, 4, 3, 3],
            numel=288,
            frob_norm=1.0 + i,
            trace=2.0,
            trace_se=0.1,
            wci_term=10.0 - i,
            **layer,
        )  # type: ignore[arg-type]
        for i, n in enumerate(names)
    ]
    r.wci = sum(la.wci_term for la in r.layers)
    return r


def test_long_names_are_whole_at_80_columns() -> None:
    names = [
        "features.denseblock4.denselayer16.conv2.weight",
        "features.denseblock4.denselayer15.conv2.weight",
        "stages.3.blocks.2.attn.qkv_projection_with_a_very_long_suffix.weight",
    ]
    text = _render(_result(names, method="hutchinson", probes=60, flag="not converged"))
    # a name too long for its column wraps, never cut: the first column's pieces, joined
    flat = "".join(line.split("│")[0].strip() for line in text.splitlines() if "│" in line)
    assert "…" not in text
    for name in names:
        assert name in flat
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "hutchinson, 60 probes" in text and "flag: not converged" in text
    # a row takes at most name + shape/route + flag lines (not one line per word)
    assert text.count("\n") < 8 * len(names) + 20


def test_wide_console_has_one_column_per_field() -> None:
    text = _render(_result(["a.weight"], method="exact-ggn", probes="exact"), width=140)
    assert "route" in text and "exact-ggn" in text and "shape" in text


def test_more_layers_than_shown_is_one_line() -> None:
    text = _render(_result([f"l{i}.weight" for i in range(SHOWN_LAYERS + 3)]))
    assert "... 3 more layers in the JSON" in text


def test_markup_in_a_file_name_prints_literally() -> None:
    r = _result(["a.weight"])
    r.checkpoint.path = "m[bold].safetensors"
    r.layers[0].name = "x[red].weight"
    assert "m[bold].safetensors" in _render(r)
    assert "x[red].weight" in _render(r) and "x[red].weight" in _render(r, width=140)


def test_weights_only_shows_no_data_figures() -> None:
    r = _result(["a.weight"])
    r.dataset = DatasetInfo(name="none", reason="weights only: no data asked for")
    r.config = {
        "eps": 8 / 255,
        "attack": "pgd",
        "steps": 10,
        "step_size": 0.01,
        "restarts": 1,
        "seed": 0,
        "device": "cpu",
    }
    r.wci = None
    text = _render(r)
    assert "None" not in text and "threat:" not in text and "attack" not in text
    assert "WCI =" not in text and "weights only" in text


@pytest.mark.slow
def test_scan_subprocess_at_80_columns(tmp_path: Path) -> None:
    # the checkpoint is named relative to the folder the scan runs in, so that the
    # header's path does not depend on how long the temporary folder's name is
    ckpt = tmp_path / "[red]m.safetensors"
    shutil.copy(CNN, ckpt)
    env = child_env(COLUMNS="80")
    res = subprocess.run(
        [sys.executable, "-m", "wciaudit", "scan", ckpt.name, *TINY_CNN_SCAN, "--json", "r.json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert "…" not in res.stdout and "[red]m.safetensors" in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 80
    layers = json.loads((tmp_path / "r.json").read_text())["layers"]
    shown = sorted(layers, key=lambda la: -(la["wci_term"] or 0))[:SHOWN_LAYERS]
    words = res.stdout.split()
    for la in shown:
        assert la["name"] in words


def _autoattack_result() -> AuditResult:
    r = _result(["conv1.weight"])
    r.config = {"eps": 0.1, "norm": "linf", "attack": "autoattack", "seed": 0, "device": "cpu"}
    r.metrics = Metrics(robust_acc_train=0.25, robust_acc_test=0.5, gap_err=-0.25)
    r.attacks = AttackInfo(
        accuracy_from="autoattack",
        loss_from="apgd-ce",
        hessian_points_from="apgd-ce",
        broken_by={"test": {"clean": 1, "apgd-ce": 17, "apgd-t": 2, "fab-t": 0, "square": 0}},
        robust_acc={
            "autoattack": {"train": 0.25, "train_se": 0.07, "test": 0.5, "test_se": 0.08},
            "apgd-ce": {"train": 0.275, "train_se": 0.07, "test": 0.55, "test_se": 0.08},
        },
    )
    return r


def test_autoattack_and_its_loss_attack_side_by_side() -> None:
    text = _render(_autoattack_result(), width=120)
    lines = text.splitlines()
    auto = next(line for line in lines if "robust acc, autoattack" in line)
    ce = next(line for line in lines if "robust acc, apgd-ce" in line)
    assert "0.25" in auto and "0.5" in auto
    assert "0.275" in ce and "0.55" in ce
    assert "robust accuracy from autoattack; robust loss and Hessian points from apgd-ce" in text
    assert "broken first by, test: clean 1, apgd-ce 17, apgd-t 2, fab-t 0, square 0" in text
    assert "robust loss, apgd-ce" in text
    # AutoAttack's settings are its own: no PGD step count beside its name
    assert "autoattack-" not in text
