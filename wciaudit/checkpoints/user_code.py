"""Import the architecture a user names: a ``models.py`` file or an importable module.

Only a file or module the *user* names is imported; a name found in checkpoint metadata
is at most looked up as a class defined inside that user-named module, never imported.
A file is imported once per (resolved path, modification time, size): scanning a run of
checkpoints that share one ``models.py`` adds one ``sys.modules`` entry, not one per
checkpoint, and an edited file is imported afresh under the same entry.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

from torch import nn

from ..errors import CheckpointError
from ._text import one_line

# (resolved path, mtime_ns, size) -> the module imported from it
_FILE_MODULES: dict[tuple[str, int, int], ModuleType] = {}


def import_file(file: Path) -> ModuleType:
    """The module defined by ``file``, imported on first use and cached after."""
    if file.is_dir():
        raise CheckpointError(f"architecture file {file} is a folder, not a .py file")
    if not file.is_file():
        raise CheckpointError(f"architecture file not found: {file}")
    resolved = file.resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_mtime_ns, stat.st_size)
    module = _FILE_MODULES.get(key)
    if module is None:
        module = _exec_file(file, resolved)
        # an edited file replaces its earlier version, in the cache as in sys.modules
        for old in [k for k in _FILE_MODULES if k[0] == key[0]]:
            del _FILE_MODULES[old]
        _FILE_MODULES[key] = module
    return module


def _exec_file(file: Path, resolved: Path) -> ModuleType:
    digest = hashlib.sha256(str(resolved).encode("utf-8")).hexdigest()[:12]
    module_name = f"_wciaudit_arch_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise CheckpointError(f"cannot import architecture file {file}")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module  # dataclasses and the like look themselves up here
    # The file's own folder is importable while it runs, so `from layers import X` works.
    folder = str(resolved.parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        if previous is None:
            sys.modules.pop(module_name, None)
        else:
            sys.modules[module_name] = previous
        raise CheckpointError(
            one_line(f"importing architecture file {file} failed: {type(exc).__name__}: {exc}")
        ) from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def import_module(name: str) -> ModuleType:
    """An importable module by dotted name (Python caches it in ``sys.modules``)."""
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as exc:
        raise CheckpointError(
            one_line(f"cannot import architecture module {name!r}: {type(exc).__name__}: {exc}")
        ) from None


def find_class(
    module: ModuleType, class_name: str, where: str, *, defined_here: bool
) -> type[nn.Module]:
    """``module.class_name``, which must be an ``nn.Module`` subclass (and, for a name
    taken from metadata, defined in ``module`` itself)."""
    cls = getattr(module, class_name, None)
    if cls is None:
        raise CheckpointError(f"{where} defines no class {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise CheckpointError(f"{where}:{class_name} is not a subclass of torch.nn.Module")
    if defined_here and cls.__module__ != module.__name__:
        # a name from metadata may only pick a class the user's file itself defines
        raise CheckpointError(
            f"{where}:{class_name} is imported into {where}, not defined there; pass --arch explicitly"
        )
    return cls


def accepts(cls: type, name: str) -> bool:
    """Whether the constructor of ``cls`` takes a keyword ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
