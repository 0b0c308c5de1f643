"""The pure-Python safetensors header check (wciaudit.safetensors_header)."""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wciaudit.errors import CheckpointError
from wciaudit.safetensors_header import DTYPE_BITS, Header, parse_header

_SETTINGS = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_TORCH_DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int8,
    torch.uint8,
    torch.bool,
]


def _write(
    path: Path, header: dict | bytes, buffer: bytes = b"", length: int | None = None
) -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + buffer)
    return path


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _message(path: Path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        parse_header(path, **kwargs)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"not a valid safetensors file: {path} (")
    return text


def test_a_file_written_by_safetensors_parses(tmp_path: Path) -> None:
    tensors = {"b": torch.zeros(3), "a": torch.ones(2, 2, dtype=torch.float16), "e": torch.zeros(0)}
    path = tmp_path / "t.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"arch": "x", "z": "1"})
    header = parse_header(path)
    assert isinstance(header, Header)
    got, metadata, start = header
    assert metadata == {"arch": "x", "z": "1"}
    assert got["a"] == {"dtype": "F16", "shape": [2, 2], "data_offsets": got["a"]["data_offsets"]}
    assert (
        start + max(e for _, e in (t["data_offsets"] for t in got.values())) == path.stat().st_size
    )
    data = path.read_bytes()
    for name, tensor in tensors.items():
        begin, end = got[name]["data_offsets"]
        assert data[start + begin : start + end] == tensor.numpy().tobytes()


@pytest.mark.parametrize(
    ("header", "buffer", "length", "needle"),
    [
        (b"", b"", 0, "length is 0"),
        (b"{}", b"", 100, "larger than the rest of the file"),
        (b"{}", b"", 2**64 - 1, "larger than the rest of the file"),
        (b"\xff{}", b"", None, "not UTF-8"),
        (b"[]", b"", None, "not a JSON object"),
        (b" {}", b"", None, "not a JSON object"),
        (b'{"a": 1', b"", None, "not valid JSON"),
        (b"{" * 5000 + b"}" * 5000, b"", None, "JSON"),
        (
            b'{"a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}, '
            b'"a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}',
            bytes(4),
            None,
            "twice",
        ),
        ({"__metadata__": ["a"]}, b"", None, "__metadata__ must be an object"),
        ({"__metadata__": {"k": 1}}, b"", None, "must be a string"),
        ({"__metadata__": {"k": None}}, b"", None, "must be a string"),
        ({"a": [1]}, b"", None, "must be an object"),
        ({"a": {"dtype": "F32", "shape": [1]}}, bytes(4), None, "no data_offsets"),
        ({"a": _entry("F31", [1], 0, 4)}, bytes(4), None, "unknown dtype 'F31'"),
        ({"a": _entry(7, [1], 0, 4)}, bytes(4), None, "unknown dtype 7"),
        ({"a": _entry("F32", [-1], 0, 4)}, bytes(4), None, "shape [-1]"),
        ({"a": _entry("F32", [1.5], 0, 4)}, bytes(4), None, "shape"),
        ({"a": _entry("F32", [True], 0, 4)}, bytes(4), None, "shape"),
        ({"a": _entry("F32", "1", 0, 4)}, bytes(4), None, "shape"),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}},
            bytes(4),
            None,
            "[begin, end]",
        ),
        ({"a": _entry("F32", [1], 4, 0)}, bytes(4), None, "outside"),
        ({"a": _entry("F32", [1], -4, 0)}, bytes(4), None, "outside"),
        ({"a": _entry("F32", [4], 0, 16)}, bytes(8), None, "outside the 8-byte data buffer"),
        ({"a": _entry("F32", [3], 0, 8)}, bytes(8), None, "needs 12"),
        ({"a": _entry("F4", [3], 0, 1)}, bytes(1), None, "whole number of bytes"),
        (
            {"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)},
            bytes(12),
            None,
            "overlaps",
        ),
        (
            {"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [1], 8, 12)},
            bytes(12),
            None,
            "bytes 4..8",
        ),
        ({"a": _entry("F32", [1], 4, 8)}, bytes(8), None, "bytes 0..4"),
        ({"a": _entry("F32", [1], 0, 4)}, bytes(6), None, "cover 4 bytes"),
    ],
)
def test_bad_headers_are_refused_with_one_line(
    tmp_path: Path, header, buffer: bytes, length: int | None, needle: str
) -> None:
    path = _write(tmp_path / "bad.safetensors", header, buffer, length)
    assert needle in _message(path)


def test_empty_short_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "e.safetensors"
    empty.write_bytes(b"")
    assert "empty" in _message(empty)
    short = tmp_path / "s.safetensors"
    short.write_bytes(b"\x01\x00")
    assert "too short" in _message(short)
    with pytest.raises(CheckpointError, match="cannot read"):
        parse_header(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="cannot read"):
        parse_header(tmp_path)  # a folder


def test_limits_on_header_and_metadata(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.safetensors", {"__metadata__": {"note": "x" * 5000}})
    assert "over the limit" in _message(path, max_header_bytes=1000)
    assert "the metadata is" in _message(path, max_metadata_bytes=1000)
    assert parse_header(path).metadata["note"] == "x" * 5000


def test_zero_sized_tensors_may_share_an_offset(tmp_path: Path) -> None:
    header = {
        "a": _entry("F32", [0, 3], 0, 0),
        "b": _entry("I64", [0], 0, 0),
        "c": _entry("U8", [2], 0, 2),
    }
    tensors, _, _ = parse_header(_write(tmp_path / "z.safetensors", header, bytes(2)))
    assert set(tensors) == {"a", "b", "c"}


def test_names_from_the_file_are_quoted_and_bounded(tmp_path: Path) -> None:
    name = "evil\nname\x1b[31m" + "x" * 500
    path = _write(tmp_path / "n.safetensors", {name: _entry("F32", [1], 0, 8)}, bytes(8))
    message = _message(path)
    assert "\\n" in message and "\x1b" not in message and len(message) < 400


# -- properties ----------------------------------------------------------------------------


@st.composite
def _state_dicts(draw) -> dict[str, torch.Tensor]:
    names = draw(
        st.lists(
            st.text(
                st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12
            ).filter(lambda s: s != "__metadata__"),
            unique=True,
            max_size=6,
        )
    )
    out = {}
    for name in names:
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        dtype = draw(st.sampled_from(_TORCH_DTYPES))
        out[name] = torch.zeros(shape, dtype=dtype)
    return out


@_SETTINGS
@given(
    tensors=_state_dicts(),
    metadata=st.none() | st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=4),
)
def test_every_file_safetensors_writes_parses(
    tmp_path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None
) -> None:
    path = tmp_path / "p.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    try:
        safetensors.torch.load_file(str(path))
    except Exception:
        # safetensors 0.8 writes no tensors + empty metadata as '{},"__metadata__":{}}',
        # which it cannot read back itself: that file must be refused, not parsed
        with pytest.raises(CheckpointError):
            parse_header(path)
        return
    got, meta, start = parse_header(path)
    assert set(got) == set(tensors)
    assert meta == (metadata or {})
    for name, tensor in tensors.items():
        assert got[name]["shape"] == list(tensor.shape)
        assert DTYPE_BITS[got[name]["dtype"]] == tensor.element_size() * 8
    assert start <= path.stat().st_size


@_SETTINGS
@given(tensors=_state_dicts(), data=st.data())
def test_corrupted_files_raise_only_checkpoint_error(
    tmp_path: Path, tensors: dict[str, torch.Tensor], data: st.DataObject
) -> None:
    path = tmp_path / "c.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    raw = bytearray(path.read_bytes())
    how = data.draw(st.sampled_from(["flip", "truncate", "splice", "length"]))
    if how == "flip" and raw:
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    elif how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif how == "splice":
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(max_size=16))
    else:
        raw[:8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1)))
    path.write_bytes(bytes(raw))
    try:
        tensors_out, _, start = parse_header(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc)
        return
    # what passes the check is something the library itself reads
    loaded = safetensors.torch.load_file(str(path))
    assert set(loaded) == set(tensors_out) and start <= len(raw)


@_SETTINGS
@given(
    header=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=6),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
        ),
        max_leaves=15,
    ),
    buffer=st.binary(max_size=32),
)
def test_random_json_headers_raise_only_checkpoint_error(
    tmp_path: Path, header, buffer: bytes
) -> None:
    path = _write(tmp_path / "r.safetensors", json.dumps(header).encode(), buffer)
    with contextlib.suppress(CheckpointError):
        parse_header(path)


@_SETTINGS
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_checkpoint_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "b.safetensors"
    path.write_bytes(raw)
    with contextlib.suppress(CheckpointError):
        parse_header(path)
