"""How ``--help`` shows a command's parameters, the same under every typer version.

Arguments are named in capitals (``CHECKPOINT``, ``RESULT``), in the usage line, the
table and the missing-argument error alike, and flags show no value type (newer typer
prints ``<bool>`` beside every flag, as if it took a value).
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand


class HelpCommand(TyperCommand):
    """A typer command whose parameters read as described above."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            _tidy(param)
        return params


def _tidy(param: Any) -> None:
    # duck-typed: typer ships its own copy of click's classes in newer versions
    if param.metavar is not None or not param.name:
        return
    if param.param_type_name == "argument":
        param.metavar = param.name.upper()
    elif getattr(param, "is_flag", False):
        param.metavar = ""
