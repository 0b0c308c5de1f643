"""Where ``wciaudit track`` keeps its cache: a folder the user owns, one per run folder,
never the run folder itself (which may be read-only); ``--cache DIR`` overrides."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from cli_runner import TINY_CNN_SCAN, invoke_in

from wciaudit.track import cache_folder, cache_root, find_checkpoints, order_checkpoints

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "sample_models" / "run_digits_cnn"


def _folder_of(run: Path) -> Path:
    return cache_folder([run], order_checkpoints(find_checkpoints([run])), None)


def test_root_from_env_then_xdg_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WCIAUDIT_CACHE_DIR", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "own"
    monkeypatch.delenv("WCIAUDIT_CACHE_DIR")
    assert cache_root() == tmp_path / "xdg" / "wciaudit"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "wciaudit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == tmp_path / "home" / ".cache" / "wciaudit"


def test_two_runs_with_one_name_get_two_folders(tmp_path: Path) -> None:
    runs = [tmp_path / "a" / "run", tmp_path / "b" / "run"]
    for run in runs:
        run.mkdir(parents=True)
        shutil.copy(RUN / "epoch_1.safetensors", run)
    first, second = (_folder_of(run) for run in runs)
    assert first != second
    assert first.parent == second.parent == cache_root() / "track"
    assert first.name.startswith("run-") and second.name.startswith("run-")
    # the same folder through a symlink is the same run
    link = tmp_path / "link"
    link.symlink_to(runs[0], target_is_directory=True)
    assert _folder_of(link) == first
    # a glob or a list of files is known by the folder of its first checkpoint
    files = [str(runs[0] / "epoch_1.safetensors")]
    assert cache_folder(files, order_checkpoints(find_checkpoints(files)), None) == first


def test_read_only_run_folder_works_and_the_cache_is_reused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for epoch in (1, 40):
        shutil.copy(RUN / f"epoch_{epoch}.safetensors", run)
    before = sorted(p.name for p in run.iterdir())
    run.chmod(
        stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    )
    try:
        args = ["track", str(run), *TINY_CNN_SCAN]
        args += ["-o", str(tmp_path / "t.html"), "--json", str(tmp_path / "t.json")]
        code, _, stderr = invoke_in(tmp_path, [*args, "-q"])
        assert code == 0, stderr
        cache = _folder_of(run)
        assert len(list(cache.glob("*.json"))) == 2
        code, stdout, stderr = invoke_in(tmp_path, args)
        assert code == 0, stderr
        # the console folds a path longer than its width inside the path itself, so the
        # line is compared without whitespace (the pytest-xdist workers' folders are longer)
        assert f"0scanned,2fromthecache({cache})" in "".join(stdout.split())
        # nothing was written beside the checkpoints (root could have: it ignores 0555)
        assert sorted(p.name for p in run.iterdir()) == before
    finally:
        run.chmod(0o755)


def test_cache_flag_puts_the_entries_in_the_folder_given(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(RUN / "epoch_1.safetensors", run)
    mine = tmp_path / "mine"
    args = ["track", str(run), *TINY_CNN_SCAN, "-q", "--cache", str(mine)]
    args += ["-o", str(tmp_path / "t.html"), "--json", str(tmp_path / "t.json")]
    code, _, stderr = invoke_in(tmp_path, args)
    assert code == 0, stderr
    assert len(list(mine.glob("*.json"))) == 1
    assert not _folder_of(run).exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any folder")
def test_unwritable_cache_root_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    monkeypatch.setenv("WCIAUDIT_CACHE_DIR", str(locked / "cache"))
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(RUN / "epoch_1.safetensors", run)
    code, _, stderr = invoke_in(tmp_path, ["track", str(run), *TINY_CNN_SCAN, "-q"])
    assert code == 2
    assert stderr.startswith("wciaudit: error: cannot create the cache folder")
    assert len(stderr.strip().splitlines()) == 1
