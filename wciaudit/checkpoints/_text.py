"""Short, safe text for messages and the report: one line, bounded length."""

from __future__ import annotations

import json
import keyword
import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

#: names shown in a message before "(and N more)"
MAX_LISTED_KEYS = 5


def one_line(text: str, limit: int = 400) -> str:
    """Messages reach a terminal: one line, no escape codes, bounded length."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return clip(" ".join(text.split()), limit)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def list_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    rest = len(keys) - MAX_LISTED_KEYS
    return f"{shown} (and {rest} more)" if rest > 0 else shown


def is_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def json_value(text: str, key: str, where: str) -> Any:
    """A metadata value parsed as JSON, or a :class:`CheckpointError` naming the key."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"metadata key {key!r} in {where} is not valid JSON") from None


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object (a folder's ``config.json``, a
    ``preprocessor_config.json``), or a one-line :class:`CheckpointError` saying why not."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(one_line(f"cannot read {path}: {exc}")) from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return value


def gib(n_bytes: int) -> str:
    if n_bytes < 2**30:
        return f"{n_bytes / 2**20:.3g} MiB"
    return f"{n_bytes / 2**30:.3g} GiB"
