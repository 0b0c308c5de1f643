"""Tests of wciaudit.result.write_atomic: content, atomicity and file modes."""

import os
import stat
import sys
from pathlib import Path

import pytest

from wciaudit.errors import ConfigError
from wciaudit.result import _umask, write_atomic

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_text_and_bytes(tmp_path):
    assert write_atomic(tmp_path / "a.txt", "héllo").read_text(encoding="utf-8") == "héllo"
    assert write_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]


def test_missing_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        write_atomic(tmp_path / "nope" / "a.txt", "x")


def test_failure_leaves_no_temp_file_and_the_old_file_untouched(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_atomic(target, 12345)  # neither str nor bytes: fails while writing
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


@posix_only
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_file_follows_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert _umask() == mask
    assert _mode(write_atomic(tmp_path / "report.html", "<html>")) == expected
    # the same as an ordinary open() under that umask
    (tmp_path / "plain.html").write_text("<html>")
    assert _mode(tmp_path / "plain.html") == expected


@posix_only
def test_existing_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "result.json"
    target.write_text("{}")
    target.chmod(0o640)
    write_atomic(target, '{"a": 1}')
    assert _mode(target) == 0o640 and target.read_text() == '{"a": 1}'
    target.chmod(0o604)
    write_atomic(target, "{}")
    assert _mode(target) == 0o604


@posix_only
def test_umask_without_proc(monkeypatch, umask):
    import wciaudit.result as result

    def no_proc(*args, **kwargs):
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(result, "open", no_proc, raising=False)
    umask(0o027)
    assert _umask() == 0o027
    assert os.umask(0o027) == 0o027  # read back unchanged
