"""The terminal summary says what the reader would otherwise miss: the input
normalisation and its source in the header, and how many layers WCI counts when some
have Tr(H) <= 0 at the adversarial points."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from cli_runner import invoke_in
from rich.console import Console

from wciaudit.cli.summary import print_summary
from wciaudit.report import render_report
from wciaudit.result import AuditResult, DatasetInfo, LayerResult


def _render(result: AuditResult, width: int = 80) -> str:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    print_summary(result, console)
    return console.export_text()


def _smooth(nonpositive: int, total: int) -> AuditResult:
    r = AuditResult(dataset=DatasetInfo(name="digits", n_train=40, n_test=40, reason="asked"))
    r.layers = [
        LayerResult(
            name=f"blocks.{i}.attn.qkv.weight",
            frob_norm=1.0,
            trace=-5.0 if i < nonpositive else 4.0,
            trace_se=0.5,
            wci_term=0.0 if i < nonpositive else 2.0,
        )
        for i in range(total)
    ]
    r.wci, r.wci_se = sum(la.wci_term for la in r.layers), 0.1
    return r


def test_summary_says_how_many_layers_wci_counts():
    text = " ".join(_render(_smooth(25, 26)).split())
    assert (
        "25 of 26 layers have Tr(H) <= 0 at the adversarial points and add 0: WCI and its SE "
        "are those of the other 1 layer alone (docs/spec.md: Layers with Tr(H) <= 0)" in text
    )
    few = " ".join(_render(_smooth(1, 4)).split())
    assert "1 of 4 layers has Tr(H) <= 0" in few and "docs/spec.md" not in few
    assert "Tr(H) <= 0" not in _render(_smooth(0, 3))


@pytest.mark.slow
def test_arch_on_a_plain_state_dict_names_timm_normalisation(tmp_path: Path):
    """--arch on a bare state dict takes mean/std from timm's config: the header says so
    (and says the flags when --mean/--std are given); the report's header too."""
    import timm

    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=10).state_dict(), tmp_path / "m.pt")
    base = ["scan", "m.pt", "--arch", "test_resnet", "--weights-only"]
    code, stdout, stderr = invoke_in(tmp_path, [*base, "--json", "a.json", "--html", "a.html"])
    assert code == 0, stderr
    header = " ".join(stdout.split("data:")[0].split())
    assert "normalisation: mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5) (from timm config)" in header
    page = (tmp_path / "a.html").read_text(encoding="utf-8")
    assert (
        "<dt>Normalisation</dt><dd>mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5) (from timm config)"
        in page
    )
    code, stdout, _ = invoke_in(tmp_path, [*base, "--mean", "0", "--std", "1", "--json", "b.json"])
    assert code == 0 and "normalisation: mean (0), std (1) (from flag)" in stdout


def test_report_header_says_no_normalisation():
    r = _smooth(0, 2)
    r.config = {
        **dict(eps=0.1, attack="pgd", steps=1, step_size=0.1, restarts=1, seed=0, device="cpu"),
        "preprocessing_source": {"mean": "default", "std": "default"},
    }
    page = render_report([r])
    assert (
        "<dt>Normalisation</dt><dd>none (from default): inputs reach the network as they are"
        in page
    )
    assert "normalisation: none (from default)" in " ".join(_render(r).split())


def test_a_long_checkpoint_path_breaks_between_folders_not_inside_the_file_name():
    """At 80 columns a path that does not fit beside the version goes on its own lines,
    broken after a ``/``: the file name stays whole (rich alone folds it mid-word)."""
    r = _smooth(0, 1)
    folder = "/tmp/pytest-of-root/pytest-1666/test_scan_subprocess_at_80_columns0/"
    r.checkpoint.path = folder + "[red]m.safetensors"
    lines = _render(r).splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[1] == folder
    assert lines[2].startswith("[red]m.safetensors (")
