"""A user's models.py is imported once per file, never once per checkpoint."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import safetensors.torch

from wciaudit.checkpoints import load_checkpoint

SOURCE = textwrap.dedent(
    """
    from torch import nn


    class Net(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.fc = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.fc(x.flatten(1))
    """
)


def _checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    file = tmp_path / "models.py"
    file.write_text(SOURCE)
    namespace: dict = {}
    exec(compile(SOURCE, str(file), "exec"), namespace)
    path = tmp_path / "net.safetensors"
    safetensors.torch.save_file(namespace["Net"]().state_dict(), str(path), {"arch": "Net"})
    return file, path


def test_loading_twice_adds_no_module_the_second_time(tmp_path: Path) -> None:
    file, path = _checkpoint(tmp_path)
    first = load_checkpoint(path, arch=str(file))
    keys = set(sys.modules)
    second = load_checkpoint(path, arch=str(file))
    assert set(sys.modules) == keys
    assert type(first.model) is type(second.model)  # the same class object, from one import


def test_an_edited_file_is_imported_afresh_under_the_same_name(tmp_path: Path) -> None:
    file, path = _checkpoint(tmp_path)
    first = load_checkpoint(path, arch=f"{file}:Net")
    keys = set(sys.modules)
    file.write_text(SOURCE + "\nEDITED = True\n")
    stat = file.stat()
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = load_checkpoint(path, arch=f"{file}:Net")
    assert set(sys.modules) == keys
    assert type(first.model) is not type(second.model)
    assert sys.modules[type(second.model).__module__].EDITED is True
