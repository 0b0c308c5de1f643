"""What ``track`` tells the reader: a skipped checkpoint, the overfitting sentence, the
default output names, a saved track JSON rendered by ``wciaudit report``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from cli_runner import TINY_CNN_SCAN, invoke_in

from wciaudit.errors import ConfigError
from wciaudit.result import AuditResult
from wciaudit.track import TrackEntry, TrackResult, overfitting_sentence, run_stem

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "sample_models" / "run_digits_cnn"


def _entry(epoch: float, name: str, loss: float, se: float = 0.01) -> TrackEntry:
    r = AuditResult(wci=10.0 + epoch / 10, wci_se=0.2)
    r.metrics.robust_loss_test, r.metrics.robust_loss_test_se = loss, se
    r.metrics.gap_loss, r.metrics.gap_err, r.metrics.robust_acc_test = 0.12, 0.05, 0.55
    r.checkpoint.path = f"run/{name}"
    return TrackEntry(epoch, f"run/{name}", "ab" * 32, False, r)


def _run(*losses: tuple[float, float, float]) -> TrackResult:
    return TrackResult(
        entries=[_entry(e, f"epoch_{e:g}.safetensors", v, se) for e, v, se in losses],
        epoch_source="file name",
    )


# -- the overfitting sentence ---------------------------------------------------------------
def test_one_checkpoint_claims_no_overfitting():
    text = overfitting_sentence(_run((1, 1.2, 0.02)))
    assert "one measured checkpoint" in text and "overfitting after" not in text


def test_lowest_loss_at_the_last_checkpoint_is_no_overfitting():
    text = overfitting_sentence(_run((1, 1.5, 0.02), (10, 1.3, 0.02), (40, 1.1, 0.02)))
    assert text.startswith("lowest robust test loss at epoch 40 (1.1), the last checkpoint")
    assert "no robust overfitting within this run" in text


def test_a_rise_beyond_two_se_is_overfitting_and_one_within_is_not():
    # 1.1 -> 1.4: +0.3 against 2 * hypot(0.02, 0.02) = 0.057
    text = overfitting_sentence(_run((1, 1.5, 0.02), (10, 1.1, 0.02), (40, 1.4, 0.02)))
    assert text.endswith("robust overfitting after epoch 10")
    assert "rises to 1.4 by epoch 40" in text
    # 1.1 -> 1.15 with SEs of 0.05: +0.05 against 0.14
    text = overfitting_sentence(_run((1, 1.5, 0.05), (10, 1.1, 0.05), (40, 1.15, 0.05)))
    assert "no clear robust overfitting" in text and "overfitting after" not in text


def test_no_robust_loss_no_sentence():
    assert overfitting_sentence(TrackResult()) is None


# -- default output names -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "stem"),
    [
        ("runs/exp7", "exp7"),
        ("runs/exp7/", "exp7"),
        ("runs/exp7/epoch_[13].safetensors", "exp7"),
        ("runs/exp7/epoch_*.safetensors", "exp7"),
        ("runs/*/last.pt", "runs"),
        ("runs/exp?/epoch_1.pt", "runs"),
    ],
)
def test_run_stem_never_holds_a_wildcard(source, stem):
    assert run_stem([source]) == stem


def test_run_stem_of_files_and_of_the_current_folder(tmp_path, monkeypatch):
    ckpt = tmp_path / "epoch_3.safetensors"
    ckpt.write_bytes(b"x")
    assert run_stem([ckpt]) == "epoch_3"
    monkeypatch.chdir(tmp_path)
    assert run_stem(["."]) == tmp_path.name
    assert run_stem(["*.safetensors"]) == tmp_path.name


# -- a saved track JSON -----------------------------------------------------------------------
def test_track_json_round_trips_and_renders_with_report(tmp_path):
    run = _run((1, 1.5, 0.02), (10, 1.1, 0.02), (40, 1.4, 0.02))
    saved = run.save(tmp_path / "run.track.json")
    again = TrackResult.load(saved)
    assert again.to_dict() == run.to_dict()
    code, stdout, stderr = invoke_in(tmp_path, ["report", str(saved), "-o", "page.html"])
    assert code == 0, stderr
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert "WCI track" in page and "robust overfitting after epoch 10" in page
    # a track result does not join a comparison of scan results
    scan_json = AuditResult().save(tmp_path / "scan.json")
    code, _, stderr = invoke_in(tmp_path, ["report", str(saved), str(scan_json)])
    assert code == 2 and "is a track result: render it alone" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_a_track_json_of_another_layout_is_refused(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"kind": "wciaudit-track", "track_schema_version": 9}))
    with pytest.raises(ConfigError, match="track_schema_version 9"):
        TrackResult.load(bad)
    code, _, stderr = invoke_in(tmp_path, ["report", str(bad)])
    assert code == 2 and "track_schema_version 9" in stderr


# -- a truncated checkpoint -------------------------------------------------------------------
def _truncated_run(tmp_path: Path, epochs: tuple[int, ...], truncated: int) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    for epoch in epochs:
        shutil.copy(RUN / f"epoch_{epoch}.safetensors", run)
    data = (RUN / f"epoch_{truncated}.safetensors").read_bytes()
    (run / f"epoch_{truncated}.safetensors").write_bytes(data[: len(data) // 2])
    return run


@pytest.mark.slow
def test_truncated_newest_checkpoint_is_skipped_and_the_run_goes_on(tmp_path):
    run = _truncated_run(tmp_path, (1, 10), truncated=40)
    args = ["track", str(run), *TINY_CNN_SCAN, "--cache", str(tmp_path / "cache"), "-q"]
    code, _, stderr = invoke_in(tmp_path, args)
    assert code == 1, stderr  # written, but not whole: CI notices
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"wciaudit: skipped .*epoch_40\.safetensors: ", lines[0])
    data = json.loads((tmp_path / "run.track.json").read_text())
    assert data["series"]["epoch"] == [1, 10]
    assert [Path(s["path"]).name for s in data["skipped"]] == ["epoch_40.safetensors"]
    assert data["skipped"][0]["epoch"] == 40 and data["skipped"][0]["reason"]
    page = (tmp_path / "run.track.html").read_text(encoding="utf-8")
    assert "1 checkpoint(s) could not be scanned" in page


def test_a_run_with_no_readable_checkpoint_exits_2_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "epoch_1.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    (run / "epoch_2.safetensors").write_bytes(b"")
    args = ["track", str(run), *TINY_CNN_SCAN, "--cache", str(tmp_path / "cache"), "-q"]
    code, _, stderr = invoke_in(tmp_path, args)
    assert code == 2 and "no checkpoint of the run could be scanned" in stderr
    assert not list(tmp_path.glob("*.track.*"))


# -- what the page's error bars cover ---------------------------------------------------------
def test_track_page_says_what_the_wci_error_bars_cover_from_se_covers():
    from wciaudit.report import render_track

    run = _run((1, 1.5, 0.02), (10, 1.1, 0.02))
    for e in run.entries:
        e.result.se_covers = {"wci": ["probes", "hessian-subset"]}
    text = " ".join(render_track(run).split())
    assert (
        "WCI: it covers the Hutchinson probes and the draw of the Hessian subset from the "
        "train split;" in text
    )
    assert "random starts" not in text.split("Error bars:")[1].split("</p>")[0]
    run.entries[1].result.se_covers = {"wci": ["probes"]}
    assert "they differ between scans" in render_track(run)
