"""Names of a package imported on first use (PEP 562), so that importing the package
does not import torch: ``wciaudit gate``, ``wciaudit report`` and ``--help`` never need it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: a name of ``where`` (name -> the relative
    module that defines it) is imported when first read, then kept in the package."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], package), name)
        vars(sys.modules[package])[name] = value
        return value

    return __getattr__
