"""How ``--help`` shows a command's parameters, the same under every typer version.

Arguments are named in capitals (``CHECKPOINT``, ``RESULT``), in the usage line, the
table and the missing-argument error alike, and flags show no value type (newer typer
prints ``<bool>`` beside every flag, as if it took a value), the top level's
``--version`` included.

On a terminal narrower than :data:`TABLE_COLUMNS`, typer's four-column table (option,
secondary option, value type, help) leaves the help column 17 characters and cuts
names and values with an ellipsis. There each parameter takes a line of its own, with
its help wrapped below it across the whole width, in the same panels.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

#: the narrowest terminal on which typer's own table leaves the help text room to read
TABLE_COLUMNS = 140
_HELP_INDENT = 4


class _TidyParams:
    """Shared by the command and the group: every parameter tidied as described above."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            _tidy(param)
        return params


class HelpCommand(_TidyParams, TyperCommand):
    """A typer command whose parameters read as described above."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        console = help_console()
        if console.width >= TABLE_COLUMNS:
            super().format_help(ctx, formatter)
            return
        print_stacked_help(self, ctx, console)


class HelpGroup(_TidyParams, TyperGroup):
    """The top-level group: its flags (``--version``, ``--help``) show no value type,
    and on a narrow terminal its help is laid out as the commands' is."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        console = help_console()
        if console.width >= TABLE_COLUMNS:
            super().format_help(ctx, formatter)
            return
        print_stacked_help(self, ctx, console)
        commands = Table.grid(padding=(0, 2))
        commands.add_column(style="bold cyan", no_wrap=True)
        commands.add_column()
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                short = inspect.cleandoc(command.help or "").split("\f")[0].split("\n\n")[0]
                commands.add_row(name, Text(" ".join(short.split())))
        console.print(Panel(commands, title="Commands", title_align="left", border_style="dim"))


def help_console() -> Console:
    """A console as wide as typer's: ``TERMINAL_WIDTH``, else ``COLUMNS``, else the terminal."""
    width = os.environ.get("TERMINAL_WIDTH", "")
    return Console(width=int(width) if width.isdigit() else None, highlight=False)


def print_stacked_help(command: Any, ctx: Any, console: Console) -> None:
    """The usage line, the command's help and one panel per parameter group, each
    parameter on its own line with its help (defaults, ``[required]``) wrapped below."""
    console.print(Padding(Text(command.get_usage(ctx)), (1, 1, 0, 1)))
    if command.help:
        # typer's convention: text after a form feed is for the code, not for --help
        text = inspect.cleandoc(command.help).split("\f")[0].strip()
        console.print(Padding(Text(text), (1, 1, 1, 1)))
    for title, records in _panels(command, ctx).items():
        rows: list[Any] = []
        for names, help_text in records:
            rows.append(Text(names, style="bold cyan"))
            if help_text:
                rows.append(Padding(Text(help_text), (0, 0, 0, _HELP_INDENT)))
        console.print(Panel(Group(*rows), title=title, title_align="left", border_style="dim"))


def _panels(command: Any, ctx: Any) -> dict[str, list[tuple[str, str]]]:
    """(names, help) of every shown parameter, by panel: arguments, options, then the
    named panels in the order they first appear."""
    panels: dict[str, list[tuple[str, str]]] = {"Arguments": [], "Options": []}
    for param in command.get_params(ctx):
        record = None if getattr(param, "hidden", False) else param.get_help_record(ctx)
        if record is None:
            continue
        default = "Arguments" if param.param_type_name == "argument" else "Options"
        title = getattr(param, "rich_help_panel", None) or default
        panels.setdefault(title, []).append((record[0], " ".join(record[1].split())))
    return {title: records for title, records in panels.items() if records}


def _tidy(param: Any) -> None:
    # duck-typed: typer ships its own copy of click's classes in newer versions
    if param.metavar is not None or not param.name:
        return
    if param.param_type_name == "argument":
        param.metavar = param.name.upper()
    elif getattr(param, "is_flag", False):
        param.metavar = ""
