"""Validate a safetensors header before any tensor is read (pure Python, no torch).

The format: an 8-byte little-endian unsigned length ``N``, then ``N`` bytes of UTF-8 JSON

    {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
     "__metadata__": {"key": "value", ...}}

then the data buffer; offsets are relative to the buffer's start. A file from a stranger
may lie in every field, so :func:`parse_header` checks all of it (the length against the
file size and a cap, the JSON, every dtype, shape and offset, and that the tensors tile
the buffer exactly, as the safetensors library requires) and raises a one-line
:class:`~wciaudit.errors.CheckpointError` naming the first problem. The library then
does the actual loading.

Example:
    >>> import json, os, struct, tempfile
    >>> header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    ...                      "__metadata__": {"arch": "test_resnet"}}).encode()
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> with open(path, "wb") as fh:
    ...     _ = fh.write(struct.pack("<Q", len(header)) + header + bytes(8))
    >>> tensors, metadata, data_start = parse_header(path)
    >>> tensors["w"]["shape"], metadata, data_start == 8 + len(header)
    ([2], {'arch': 'test_resnet'}, True)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from .errors import CheckpointError

__all__ = ["DTYPE_BITS", "MAX_HEADER_BYTES", "MAX_METADATA_BYTES", "Header", "parse_header"]

#: bits per element of every dtype the safetensors format defines
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
}

#: the safetensors library's own cap on the header length
MAX_HEADER_BYTES = 100_000_000
#: metadata is provenance copied into reports, not payload
MAX_METADATA_BYTES = 16 * 2**20
_MAX_DIMS = 64
_METADATA_KEY = "__metadata__"
_TENSOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})


class Header(NamedTuple):
    """A validated header; unpacks as ``(tensors, metadata, data_start)``.

    Attributes:
        tensors: name -> ``{"dtype": str, "shape": [int, ...], "data_offsets": [b, e]}``.
        metadata: the ``__metadata__`` strings (empty when absent).
        data_start: byte offset of the data buffer in the file (``8 + N``); the buffer
            runs from there to the end of the file.
    """

    tensors: dict[str, dict[str, Any]]
    metadata: dict[str, str]
    data_start: int


def parse_header(
    path: str | os.PathLike[str],
    *,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_metadata_bytes: int = MAX_METADATA_BYTES,
) -> Header:
    """Read and validate the header of a ``.safetensors`` file; tensors are not read.

    Args:
        path: the file.
        max_header_bytes: refuse a header longer than this (bytes).
        max_metadata_bytes: refuse metadata whose keys and values exceed this (UTF-8 bytes).

    Returns:
        The :class:`Header`.

    Raises:
        CheckpointError: ``not a valid safetensors file: <path> (<the first problem>)``.
    """

    def bad(reason: str) -> CheckpointError:
        return CheckpointError(f"not a valid safetensors file: {path} ({reason})")

    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise bad("the file is empty")
            if size < 8:
                raise bad(f"{size} bytes, too short for the 8-byte header length")
            n = int.from_bytes(fh.read(8), "little")
            if n == 0:
                raise bad("the header length is 0")
            if n > size - 8:
                raise bad(
                    f"the header length {n} bytes is larger than the rest of the file "
                    f"({size - 8} bytes): truncated or not safetensors"
                )
            if n > max_header_bytes:
                raise bad(f"the header is {_mib(n)}, over the limit of {_mib(max_header_bytes)}")
            raw = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) != n:
        raise bad("the file changed while it was read")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"the header is not UTF-8 (byte {exc.start})") from None
    if not text.startswith("{"):
        raise bad("the header is not a JSON object")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise bad(f"the header names {_name(exc.args[0])} twice") from None
    except json.JSONDecodeError as exc:
        raise bad(f"the header is not valid JSON: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise bad("the header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")

    metadata = _metadata(header.pop(_METADATA_KEY, None), max_metadata_bytes, bad)
    buffer_bytes = size - 8 - n
    tensors: dict[str, dict[str, Any]] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        tensors[name] = _tensor(name, info, buffer_bytes, bad)
        begin, end = tensors[name]["data_offsets"]
        spans.append((begin, end, name))

    _check_tiling(spans, buffer_bytes, bad)
    return Header(tensors, metadata, 8 + n)


def _check_tiling(
    spans: list[tuple[int, int, str]], buffer_bytes: int, bad: Callable[[str], CheckpointError]
) -> None:
    """The tensors must tile the buffer: no gap, no overlap, nothing after the last one."""
    position, previous = 0, None
    for begin, end, name in sorted(spans):
        if begin < position:
            raise bad(f"tensor {_name(name)} overlaps tensor {_name(previous)}")
        if begin > position:
            raise bad(f"bytes {position}..{begin} of the data buffer belong to no tensor")
        position, previous = end, name
    if position != buffer_bytes:
        raise bad(f"the tensors cover {position} bytes but the data buffer holds {buffer_bytes}")


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _metadata(value: Any, limit: int, bad: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(f"{_METADATA_KEY} must be an object of strings, got {_kind(value)}")
    total = 0
    for key, item in value.items():
        if not isinstance(item, str):
            raise bad(f"metadata value {_name(key)} must be a string, got {_kind(item)}")
        total += len(key.encode("utf-8", "surrogatepass")) + len(
            item.encode("utf-8", "surrogatepass")
        )
    if total > limit:
        raise bad(f"the metadata is {_mib(total)}, over the limit of {_mib(limit)}")
    return dict(value)


def _tensor(name: str, info: Any, buffer_bytes: int, bad: Any) -> dict[str, Any]:
    label = f"tensor {_name(name)}"
    if not isinstance(info, dict):
        raise bad(f"{label} must be an object with dtype, shape, data_offsets; got {_kind(info)}")
    missing = sorted(_TENSOR_KEYS - set(info))
    if missing:
        raise bad(f"{label} has no {', '.join(missing)}")
    dtype = info["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise bad(f"{label} has unknown dtype {_name(dtype)}; known: {', '.join(DTYPE_BITS)}")
    shape = info["shape"]
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(_is_int(s) and s >= 0 for s in shape)
    ):
        raise bad(f"{label} has shape {_short(shape)}; a shape is a list of integers >= 0")
    offsets = info["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise bad(f"{label} has data_offsets {_short(offsets)}; expected [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= buffer_bytes:
        raise bad(
            f"{label} has data_offsets [{begin}, {end}] outside the {buffer_bytes}-byte data buffer"
        )
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8:
        raise bad(f"{label}: {math.prod(shape)} x {dtype} is not a whole number of bytes")
    if end - begin != bits // 8:
        raise bad(
            f"{label} holds {end - begin} bytes but shape {shape} of {dtype} needs {bits // 8}"
        )
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        type(None): "null",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
    }
    return names.get(type(value), f"a {type(value).__name__}")


def _name(value: Any, limit: int = 80) -> str:
    """A name from the file, quoted and bounded: it may hold anything, newlines included."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any) -> str:
    return _name(value, 60)


def _mib(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"
