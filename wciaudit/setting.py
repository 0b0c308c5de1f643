"""Settings fields that carry their default, help text, check and command-line spelling once.

A settings dataclass (:class:`wciaudit.config.ScanConfig`, :class:`wciaudit.config.LoadOptions`)
declares each field with :func:`setting`; its ``__post_init__`` calls :func:`apply_checks`,
the command line builds one option per field from the same metadata
(:mod:`wciaudit.cli.options`) and :func:`document` writes the class docstring's
``Attributes`` section from it, so that a default, a range or a help text is written once.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Knobs:
    ...     steps: int = setting(10, help="PGD steps K.", check=IntRange(1, 100))
    ...     def __post_init__(self) -> None:
    ...         apply_checks(self)
    >>> Knobs(steps=0)
    Traceback (most recent call last):
    ...
    wciaudit.errors.ConfigError: steps must be an integer in [1, 100], got 0
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from enum import Enum
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Cli:
    """How the command line spells a field.

    Attributes:
        flags: the option's names; empty: ``--name-with-dashes`` (a bool:
            ``--name/--no-name``).
        text: the option takes text and hands it to the field as it is (the field's check
            parses it, as ``eps`` parses ``8/255``).
        parse: ``parse(text, flag)`` turns the option's text into the field's value before
            the settings object is made (``--mean 0.5,0.25``); implies ``text``.
        show_default: show ``[default: ...]`` in ``--help`` (False where the help text
            says what the default is).
        shared: the option is in the group every scanning command takes (``scan``,
            ``track``); False: a command that wants it declares it (``--weights-only``).
    """

    flags: tuple[str, ...] = ()
    text: bool = False
    parse: Callable[[str, str], Any] | None = None
    show_default: bool = True
    shared: bool = True

    def names(self, name: str, is_bool: bool) -> tuple[str, ...]:
        """The option's declarations for the field ``name``."""
        if self.flags:
            return self.flags
        dashed = name.replace("_", "-")
        return (f"--{dashed}/--no-{dashed}",) if is_bool else (f"--{dashed}",)


def setting(
    default: Any,
    *,
    help: str,  # noqa: A002 - the word typer and argparse use
    check: Check | None = None,
    cli: Cli | None = Cli(),  # noqa: B008 - frozen, shared safely
) -> Any:
    """A dataclass field with its default, help text, check and command-line spelling.

    Args:
        default: the field's default (immutable).
        help: one text for ``--help`` and the API docs, a sentence or two.
        check: validates (and normalises) a value; skipped for None where the default is
            None (None then means "unset").
        cli: how the command line spells it; None: no option (an API-only setting).
    """
    return field(default=default, metadata={"help": help, "check": check, "cli": cli})


def help_of(f: Field[Any]) -> str:
    """The field's help text ('' for a plain dataclass field)."""
    return str(f.metadata.get("help", ""))


def cli_of(f: Field[Any]) -> Cli | None:
    """How the command line spells the field; None: no option."""
    return f.metadata.get("cli")


class Check:
    """A rule for one value: ``check(name, value)`` returns the value (normalised) or
    raises ConfigError("<name> must be <allowed>, got <value>")."""

    #: what is allowed, as the error message and the docs say it
    allowed: str = ""

    def __call__(self, name: str, value: Any) -> Any:
        if not self.accepts(value):
            raise ConfigError(f"{name} must be {self.allowed}, got {value!r}")
        return value

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class IntRange(Check):
    """An int (not a bool) in [lo, hi]."""

    lo: int
    hi: int

    @property
    def allowed(self) -> str:  # type: ignore[override]
        return f"an integer in [{self.lo}, {self.hi}]"

    def accepts(self, value: Any) -> bool:
        return (
            isinstance(value, int) and not isinstance(value, bool) and self.lo <= value <= self.hi
        )


@dataclass(frozen=True)
class OpenInterval(Check):
    """A number in the open interval (lo, hi)."""

    lo: float
    hi: float

    @property
    def allowed(self) -> str:  # type: ignore[override]
        return f"in ({self.lo:g}, {self.hi:g})"

    def accepts(self, value: Any) -> bool:
        return bool(self.lo < value < self.hi)


@dataclass(frozen=True)
class Matches(Check):
    """Text that matches ``pattern`` whole; ``allowed`` says it in words."""

    pattern: str
    words: str

    @property
    def allowed(self) -> str:  # type: ignore[override]
        return self.words

    def accepts(self, value: Any) -> bool:
        return re.fullmatch(self.pattern, str(value)) is not None


@dataclass(frozen=True)
class OneOf(Check):
    """A member of a str Enum, or its value (normalised to the member)."""

    enum: type[Enum]

    @property
    def allowed(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(str(e.value) for e in self.enum)

    def __call__(self, name: str, value: Any) -> Any:
        try:
            return self.enum(value)
        except ValueError:
            raise ConfigError(f"{name} must be {self.allowed}, got {value!r}") from None


@dataclass(frozen=True)
class IsBool(Check):
    """True or False."""

    allowed = "True or False"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


@dataclass(frozen=True)
class Parsed(Check):
    """A value ``parse`` turns into the field's (its own ConfigError says what is wrong)."""

    parse: Callable[[Any], Any]
    words: str

    @property
    def allowed(self) -> str:  # type: ignore[override]
        return self.words

    def __call__(self, name: str, value: Any) -> Any:
        return self.parse(value)


def apply_checks(obj: Any) -> None:
    """Run every field's check on a frozen dataclass, in field order, storing what the
    check returns (an Enum member for its value, a float for ``"8/255"``).

    Raises:
        ConfigError: the first value a check refuses.
    """
    for f in fields(obj):
        check: Check | None = f.metadata.get("check")
        value = getattr(obj, f.name)
        if check is None or (value is None and f.default is None):
            continue
        object.__setattr__(obj, f.name, check(f.name, value))


def document(cls: type, width: int = 88) -> type:
    """Append an ``Attributes`` section to ``cls.__doc__``, one entry per field: its help
    text, default and what its check allows (for ``help()`` and the API docs)."""
    lines = ["", "Attributes:"]
    for f in fields(cls):
        extra = [f"default {_shown(f.default)}"]
        check = f.metadata.get("check")
        if check is not None and check.allowed:
            extra.append(check.allowed)
        if cli_of(f) is None:
            extra.append("no command-line option")
        text = f"{f.name}: {help_of(f)} ({'; '.join(extra)})"
        lines += textwrap.wrap(text, width, initial_indent="    ", subsequent_indent="        ")
    cls.__doc__ = inspect.cleandoc(cls.__doc__ or "") + "\n" + "\n".join(lines) + "\n"
    return cls


def _shown(default: Any) -> str:
    if default is MISSING:
        return "required"
    if isinstance(default, Enum):
        return str(default.value)
    if isinstance(default, Mapping):
        return repr(dict(default))
    return repr(default)


__all__ = [
    "Check",
    "Cli",
    "IntRange",
    "IsBool",
    "Matches",
    "OneOf",
    "OpenInterval",
    "Parsed",
    "apply_checks",
    "cli_of",
    "document",
    "help_of",
    "setting",
]
