"""wciaudit.track and ``wciaudit track``: ordering, cache, correlations, the page, the CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from cli_runner import TINY_CNN_SCAN, invoke_in
from typer.testing import CliRunner

import wciaudit.track.run as track_run
from wciaudit.cli.app import app
from wciaudit.config import LoadOptions
from wciaudit.errors import ConfigError
from wciaudit.report import render_track
from wciaudit.stats import kendall_tau
from wciaudit.track import cache_folder, find_checkpoints, order_checkpoints, track

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "sample_models" / "run_digits_cnn"
ARCH = str(ROOT / "sample_models" / "digits_cnn.py")
LOAD = LoadOptions(arch=ARCH)
SMALL = dict(
    eps="0.1", train_samples=100, test_samples=100, hessian_samples=64, steps=2, masking_samples=0
)
SMALL_CLI = [
    "--data",
    "sample",
    "--arch",
    ARCH,
    "--eps",
    "0.1",
    "--train-samples",
    "100",
    "--test-samples",
    "100",
    "--hessian-samples",
    "64",
    "--steps",
    "2",
    "--masking-samples",
    "0",
]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def run3(tmp_path: Path) -> Path:
    """Three checkpoints of the shipped run, copied into tmp_path (a cache of its own)."""
    folder = tmp_path / "run"
    folder.mkdir()
    for epoch in (1, 10, 40):
        shutil.copy(RUN / f"epoch_{epoch}.safetensors", folder)
    return folder


def _save(path: Path, epoch: int | None) -> None:
    meta = {"arch": "x"} if epoch is None else {"arch": "x", "epoch": str(epoch)}
    safetensors.torch.save_file({"w": torch.zeros(1)}, str(path), metadata=meta)


# -- ordering --------------------------------------------------------------------------------
def test_order_by_metadata_epoch_beats_file_names(tmp_path):
    # names sort one way, metadata says another: metadata wins when every file has it
    for name, epoch in (("a.safetensors", 30), ("b.safetensors", 2), ("c.safetensors", 10)):
        _save(tmp_path / name, epoch)
    got = order_checkpoints(find_checkpoints([tmp_path]))
    assert [p.path.name for p in got] == ["b.safetensors", "c.safetensors", "a.safetensors"]
    assert [p.epoch for p in got] == [2, 10, 30] and {p.epoch_source for p in got} == {"metadata"}


def test_order_natural_sort_when_metadata_missing(tmp_path):
    for name, epoch in (
        ("ep_10.safetensors", 10),
        ("ep_2.safetensors", None),
        ("ep_1.safetensors", 1),
    ):
        _save(tmp_path / name, epoch)
    got = order_checkpoints(find_checkpoints([tmp_path]))
    assert [p.path.name for p in got] == [
        "ep_1.safetensors",
        "ep_2.safetensors",
        "ep_10.safetensors",
    ]
    assert [p.epoch for p in got] == [1, 2, 10] and got[0].epoch_source == "file name"


def test_order_by_position_without_numbers(tmp_path):
    for name in ("first.safetensors", "second.safetensors"):
        _save(tmp_path / name, None)
    got = order_checkpoints(find_checkpoints([tmp_path]))
    assert [p.epoch for p in got] == [1, 2] and got[0].epoch_source == "position"


def test_shipped_run_is_ordered_by_metadata_and_glob_and_list_work():
    got = order_checkpoints(find_checkpoints([RUN]))
    assert [p.epoch for p in got] == [1, 3, 6, 10, 15, 20, 30, 40]
    by_glob = find_checkpoints([str(RUN / "epoch_1*.safetensors")])
    assert sorted(p.name for p in by_glob) == [
        "epoch_1.safetensors",
        "epoch_10.safetensors",
        "epoch_15.safetensors",
    ]
    listed = find_checkpoints([RUN / "epoch_3.safetensors", RUN / "epoch_3.safetensors"])
    assert len(listed) == 1


def test_find_checkpoints_errors(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        find_checkpoints([tmp_path])
    with pytest.raises(ConfigError, match="matches no"):
        find_checkpoints([str(tmp_path / "*.safetensors")])
    with pytest.raises(ConfigError, match="no such"):
        find_checkpoints([tmp_path / "missing.safetensors"])


# -- track: cache, resume --------------------------------------------------------------------
def test_cache_second_run_scans_nothing_and_new_epoch_scans_one(run3, monkeypatch):
    calls = []
    real_scan = track_run.scan

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(track_run, "scan", counting)
    first = track([run3], "sample", options=LOAD, **SMALL)
    assert len(calls) == 3 and first.scanned == 3
    assert len(list(Path(first.cache_dir).glob("*.json"))) == 3

    calls.clear()
    second = track([str(run3)], "sample", options=LOAD, **SMALL)
    assert calls == [] and second.scanned == 0
    assert second.to_dict()["series"] == first.to_dict()["series"]

    shutil.copy(RUN / "epoch_20.safetensors", run3)  # a new epoch arrives
    third = track([run3], "sample", options=LOAD, **SMALL)
    assert [Path(c).name for c in calls] == ["epoch_20.safetensors"]
    assert third.epochs == [1, 10, 20, 40]

    calls.clear()
    track([run3], "sample", options=LOAD, **{**SMALL, "seed": 1})  # other settings: other key
    assert len(calls) == 4


def test_interrupted_run_keeps_finished_scans(run3, monkeypatch):
    real_scan = track_run.scan
    done = []

    def flaky(*args, **kwargs):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(args[0])
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(track_run, "scan", flaky)
    with pytest.raises(KeyboardInterrupt):
        track([run3], "sample", options=LOAD, **SMALL)
    cache = cache_folder([run3], order_checkpoints(find_checkpoints([run3])), None)
    assert len(list(cache.glob("*.json"))) == 2
    assert not list(cache.glob(".*.tmp"))  # atomic writes leave no partial file
    monkeypatch.setattr(track_run, "scan", real_scan)
    assert track([run3], "sample", options=LOAD, **SMALL).scanned == 1


def test_corrupt_cache_entry_is_scanned_again(run3):
    first = track([run3], "sample", options=LOAD, **SMALL)
    victim = sorted(Path(first.cache_dir).glob("*.json"))[0]
    victim.write_text("{not json")
    assert track([run3], "sample", options=LOAD, **SMALL).scanned == 1


# -- the page and the JSON -------------------------------------------------------------------
def test_page_is_self_contained_and_escaped(run3, tmp_path):
    hostile = run3 / "<script>alert(1)<img src=x onerror=alert(1)>&_5.safetensors"
    shutil.copy(RUN / "epoch_6.safetensors", hostile)
    result = track([run3], "sample", options=LOAD, **SMALL)
    page = render_track(result, title="<b>title</b> & co")
    assert page.startswith("<!DOCTYPE html>")
    assert (
        "<img src=x" not in page
        and "<script>alert" not in page
        and "&lt;b&gt;title&lt;/b&gt; &amp; co" in page
    )
    assert page.count("</script>") == page.count("<script")  # nothing ends a tag early
    assert "<script src" not in page and "<link" not in page  # no external resource
    blob = page.split('id="wciaudit-figures">', 1)[1].split("</script>", 1)[0]
    assert "<" not in blob and ">" not in blob and "&" not in blob
    figures = json.loads(blob)
    assert {f"fig-{k}" for k in ("wci", "gap", "acc", "loss", "ablation", "layers")} <= set(figures)
    assert len(figures["fig-layers"]["data"][0]["z"]) == 4  # 4 layers x 4 epochs
    assert "Plotly" in page and "Kendall tau" in page


def test_json_series_and_markers(run3):
    result = track([run3], "sample", options=LOAD, **SMALL)
    d = json.loads(result.to_json())
    assert d["kind"] == "wciaudit-track" and d["series"]["epoch"] == [1, 10, 40]
    assert len(d["series"]["wci_terms"]) == len(d["series"]["layers"]) == 4
    assert {(c["measure"], c["target"]) for c in d["correlations"]} == {
        (m, t) for m in ("wci", "sum_frob_sq", "sum_trace") for t in ("gap_loss", "gap_err")
    }
    s = d["series"]
    best = min(range(3), key=lambda i: s["robust_loss_test"][i])
    assert d["markers"]["best_robust_test_loss"]["epoch"] == s["epoch"][best]
    assert d["markers"]["wci_peak"]["wci"] == max(s["wci"])
    c = result.correlation("wci", "gap_loss")
    assert c.kendall_tau == kendall_tau(s["wci"], s["gap_loss"])
    assert all(math.isfinite(v) for v in s["wci"])


# -- the command line ------------------------------------------------------------------------
def test_cli_track_writes_page_and_json_and_uses_cache(run3, tmp_path):
    runner = CliRunner()
    html, js = tmp_path / "t.html", tmp_path / "t.json"
    args = ["track", str(run3), *SMALL_CLI, "-o", str(html), "--json", str(js)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "Kendall" in res.output and "3 scanned, 0 from the cache" in res.output
    assert html.read_text().startswith("<!DOCTYPE html>")
    assert json.loads(js.read_text())["series"]["epoch"] == [1, 10, 40]
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "0 scanned, 3 from the cache" in res.output


def test_threat_model_comes_from_each_checkpoint_unless_flagged(tmp_path):
    """No --eps: each checkpoint's metadata eps (0.1 in the shipped run), recorded as
    such; --eps is a flag and a different cache key, so it scans again."""
    run = tmp_path / "run"
    run.mkdir()
    for epoch in (1, 10):
        shutil.copy(RUN / f"epoch_{epoch}.safetensors", run)
    tiny = [a for a in SMALL_CLI if a not in ("--eps", "0.1")]
    runner = CliRunner()
    js = tmp_path / "t.json"
    res = runner.invoke(
        app, ["track", str(run), *tiny, "-o", str(tmp_path / "t.html"), "--json", str(js)]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(js.read_text())
    for entry in data["checkpoints"]:
        config = entry["result"]["config"]
        assert config["eps"] == pytest.approx(0.1)
        assert config["threat_model_source"] == {"eps": "checkpoint metadata", "norm": "default"}
    assert data["settings"]["config"]["eps"] is None
    assert "threat model: linf (default) eps=0.1 (checkpoint metadata)" in res.output
    assert "eps=0.1 (checkpoint metadata)" in (tmp_path / "t.html").read_text()

    page = tmp_path / "t2.html"  # not the default, which is in the current folder
    res = runner.invoke(
        app, ["track", str(run), *tiny, "--eps", "8/255", "--json", str(js), "-o", str(page)]
    )
    assert res.exit_code == 0 and "2 scanned, 0 from the cache" in res.output
    for entry in json.loads(js.read_text())["checkpoints"]:
        config = entry["result"]["config"]
        assert config["eps"] == pytest.approx(8 / 255)
        assert config["threat_model_source"]["eps"] == "flag"


def test_checkpoints_with_different_metadata_eps_are_noted(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(RUN / "epoch_1.safetensors", run)
    with safetensors.safe_open(str(RUN / "epoch_10.safetensors"), "pt") as f:
        meta = {**f.metadata(), "eps": "0.3"}
    tensors = safetensors.torch.load_file(str(RUN / "epoch_10.safetensors"))
    safetensors.torch.save_file(tensors, str(run / "epoch_10.safetensors"), metadata=meta)
    small = {k: v for k, v in SMALL.items() if k != "eps"}
    out = track([run], "sample", options=LOAD, **{**small, "train_samples": 40, "test_samples": 40})
    assert [e.result.config["eps"] for e in out.entries] == pytest.approx([0.1, 0.3])
    assert any("different threat models (linf eps 0.1, linf eps 0.3)" in n for n in out.notes), (
        out.notes
    )


def test_every_loading_flag_reaches_each_scan(run3, tmp_path, monkeypatch):
    """--input-size and the other loading flags reach every checkpoint's scan as one
    LoadOptions (track once took five of them and dropped --input-size)."""
    seen = []

    def first_scan_only(path, data, **kwargs):
        seen.append(kwargs["options"])
        raise ConfigError("stopped after the first scan")

    monkeypatch.setattr(track_run, "scan", first_scan_only)
    flags = ["--input-size", "1,8,8", "--num-classes", "10", "--cache", str(tmp_path / "c")]
    res = CliRunner().invoke(app, ["track", str(run3), *SMALL_CLI, *flags])
    assert res.exit_code == 2 and "stopped after the first scan" in res.output
    assert seen == [LoadOptions(arch=ARCH, num_classes=10, input_size=(1, 8, 8))]


def test_cli_track_usage_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["track", str(tmp_path / "nothing"), "--quiet"])
    assert res.exit_code == 2 and "no such file" in res.output
    res = runner.invoke(app, ["track", str(RUN), "-o", str(tmp_path / "no" / "t.html")])
    assert res.exit_code == 2 and "output folder does not exist" in res.output


def test_cli_track_expands_a_quoted_glob_and_writes_in_the_current_folder(tmp_path):
    """A glob no shell expanded is expanded by the command, its checkpoints ordered by
    epoch; the page and the JSON are written in the current folder. In this process:
    real ``track`` processes run in tests/cli/test_track_cli.py and test_hardening.py."""
    run = tmp_path / "run"
    run.mkdir()
    for epoch in (1, 40, 6):
        shutil.copy(RUN / f"epoch_{epoch}.safetensors", run)
    args = [
        "track",
        str(run / "epoch_*.safetensors"),
        *TINY_CNN_SCAN,
        "--cache",
        str(tmp_path / "cache"),
        "--quiet",
    ]
    code, _, stderr = invoke_in(tmp_path, args)
    assert code == 0, stderr
    assert (tmp_path / "run.track.html").is_file() or list(tmp_path.glob("*.track.html"))
    data = json.loads(next(tmp_path.glob("*.track.json")).read_text())
    assert data["series"]["epoch"] == [1, 6, 40]
