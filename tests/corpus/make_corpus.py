"""Build the corpus of bad inputs into a folder, at test time (no binaries in the repo).

Every case is a command line that wciaudit must refuse with exit code 2, one line on
stderr that starts ``wciaudit: error:`` and names the problem (``keyword``), no
traceback, and no output file created or overwritten.

    python tests/corpus/make_corpus.py DIR    # build the files and list the cases

Each :class:`Case` runs in its own working folder ``cwd`` (created by :func:`build`);
``{out}`` in an argument stands for that folder, which holds a pre-existing JSON
result and HTML report that the failed command must leave byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

ROOT = Path(__file__).resolve().parents[2]
CNN = ROOT / "sample_models" / "digits_cnn.safetensors"
CNN_ARCH = ROOT / "sample_models" / "digits_cnn.py"
#: the smallest scan that still runs every stage
TINY = [
    "--train-samples",
    "40",
    "--test-samples",
    "40",
    "--hessian-samples",
    "20",
    "--steps",
    "1",
    "--masking-samples",
    "0",
]
#: files every case's working folder starts with; a failed command must not touch them
PREEXISTING = {
    "result.json": '{"previous": "result"}\n',
    "report.html": "<p>previous report</p>\n",
}


@dataclass
class Case:
    """One bad input.

    Attributes:
        name: short identifier (pytest id).
        args: the command line after ``wciaudit``; ``{out}`` is the working folder.
        keyword: a word the one-line message must contain (case-insensitive).
        cwd_files: extra files (name -> text) put in the working folder first.
        marker: a file that must still not exist afterwards (code was not run).
    """

    name: str
    args: list[str]
    keyword: str
    cwd_files: dict[str, str] = field(default_factory=dict)
    marker: Path | None = None

    def argv(self, out: Path) -> list[str]:
        return [a.replace("{out}", str(out)) for a in self.args]


# -- raw safetensors files -----------------------------------------------------------------


def _raw(path: Path, header: dict | bytes, buffer: bytes = b"", length: int | None = None) -> Path:
    """A safetensors file with exactly this header (object or bytes) and buffer."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + text + buffer)
    return path


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _cnn_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(CNN), framework="pt") as fh:
        metadata = dict(fh.metadata() or {})
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    return tensors, metadata


class _Payload:
    """Unpickling this (unsafely) would create ``marker``: the sign of executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# -- npz files -------------------------------------------------------------------------------


def _digits_like(n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 8, 8)).astype(np.float32), np.arange(n) % 10


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _npz_claiming(path: Path, shape: tuple[int, ...]) -> Path:
    """An npz whose x_train header claims ``shape`` (float32) over a few bytes of data."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    y = io.BytesIO()
    np.save(y, np.zeros(shape[0] if shape[0] < 100 else 10, dtype=np.int64))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x_train.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + bytes(64))
        zf.writestr("y_train.npy", y.getvalue())
    return path


# -- the corpus --------------------------------------------------------------------------------


def build(root: Path) -> list[Case]:
    """Write every bad input under ``root`` and return the cases that use them."""
    root.mkdir(parents=True, exist_ok=True)
    ck = root / "checkpoints"
    ck.mkdir(exist_ok=True)
    dd = root / "data"
    dd.mkdir(exist_ok=True)
    cnn = ["--arch", str(CNN_ARCH)]
    scan_out = ["--json", "{out}/result.json", "-q"]
    cases: list[Case] = []

    def scan(name: str, path: Path | str, keyword: str, *extra: str) -> None:
        cases.append(Case(name, ["scan", str(path), *cnn, *extra, *scan_out], keyword))

    # files that are not there, or not files
    scan("missing-file", ck / "absent.safetensors", "not found")
    (ck / "empty.safetensors").write_bytes(b"")
    scan("empty-file", ck / "empty.safetensors", "empty")
    (ck / "empty.pt").write_bytes(b"")
    scan("empty-pt", ck / "empty.pt", "empty")
    (ck / "folder.safetensors").mkdir(exist_ok=True)
    scan("directory-as-checkpoint", ck / "folder.safetensors", "config.json")
    (ck / "models.py").mkdir(exist_ok=True)
    cases.append(
        Case(
            "directory-as-arch-file",
            ["scan", str(CNN), "--arch", str(ck / "models.py"), *scan_out],
            "folder",
        )
    )
    (ck / "model.onnx").write_bytes(b"\x08\x01")
    scan("unsupported-extension", ck / "model.onnx", "unsupported")
    (ck / "short.safetensors").write_bytes(b"\x01\x02\x03")
    scan("shorter-than-length-field", ck / "short.safetensors", "too short")

    # corrupted safetensors: every field of the header lies in turn
    data = CNN.read_bytes()
    (ck / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    scan("truncated-safetensors", ck / "truncated.safetensors", "buffer")
    _raw(ck / "long-length.safetensors", {"w": _entry("F32", [1], 0, 4)}, bytes(4), length=10**6)
    scan("header-length-beyond-file", ck / "long-length.safetensors", "larger than")
    _raw(ck / "huge-length.safetensors", b"{}", length=2**63)
    scan("header-length-2^63", ck / "huge-length.safetensors", "larger than")
    _raw(ck / "zero-length.safetensors", b"", bytes(16), length=0)
    scan("header-length-zero", ck / "zero-length.safetensors", "length is 0")
    _raw(ck / "garbage.safetensors", b"\x00garbage{", bytes(8))
    scan("header-not-json", ck / "garbage.safetensors", "JSON")
    _raw(ck / "bad-json.safetensors", b'{"w": {"dtype": "F32",', bytes(8))
    scan("header-json-cut", ck / "bad-json.safetensors", "JSON")
    _raw(ck / "latin1.safetensors", b'{"__metadata__": {"arch": "\xff\xfe"}}')
    scan("metadata-not-utf8", ck / "latin1.safetensors", "UTF-8")
    _raw(ck / "list.safetensors", b"[1, 2, 3]")
    scan("header-is-a-list", ck / "list.safetensors", "JSON object")
    _raw(
        ck / "dup.safetensors",
        b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
        b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
        bytes(4),
    )
    scan("duplicate-tensor-name", ck / "dup.safetensors", "twice")
    _raw(
        ck / "overlap.safetensors",
        {"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)},
        bytes(12),
    )
    scan("overlapping-offsets", ck / "overlap.safetensors", "overlaps")
    _raw(ck / "range.safetensors", {"a": _entry("F32", [4], 0, 16)}, bytes(8))
    scan("offsets-out-of-range", ck / "range.safetensors", "outside")
    _raw(
        ck / "gap.safetensors",
        {"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [1], 8, 12)},
        bytes(12),
    )
    scan("gap-in-buffer", ck / "gap.safetensors", "belong to no tensor")
    _raw(ck / "tail.safetensors", {"a": _entry("F32", [1], 0, 4)}, bytes(20))
    scan("trailing-bytes", ck / "tail.safetensors", "cover")
    _raw(ck / "size.safetensors", {"a": _entry("F32", [3], 0, 8)}, bytes(8))
    scan("offsets-disagree-with-shape", ck / "size.safetensors", "needs")
    _raw(ck / "dtype.safetensors", {"a": _entry("F33", [1], 0, 4)}, bytes(4))
    scan("unknown-dtype", ck / "dtype.safetensors", "dtype")
    _raw(ck / "shape.safetensors", {"a": _entry("F32", [-1], 0, 4)}, bytes(4))
    scan("negative-shape", ck / "shape.safetensors", "shape")
    _raw(ck / "meta-int.safetensors", {"__metadata__": {"num_classes": 10}})
    scan("metadata-value-not-string", ck / "meta-int.safetensors", "string")
    _raw(ck / "meta-huge.safetensors", {"__metadata__": {"note": "x" * (17 * 2**20)}})
    scan("huge-metadata", ck / "meta-huge.safetensors", "metadata")

    # well-formed files whose content is wrong
    tensors, metadata = _cnn_state()
    weight = next(k for k in tensors if k.endswith(".weight"))
    bad = dict(tensors, **{weight: tensors[weight].clone()})
    bad[weight].view(-1)[0] = float("nan")
    safetensors.torch.save_file(bad, str(ck / "nan.safetensors"), metadata=metadata)
    scan("nan-weights", ck / "nan.safetensors", "NaN", "--weights-only")
    bad[weight].view(-1)[0] = float("inf")
    safetensors.torch.save_file(bad, str(ck / "inf.safetensors"), metadata=metadata)
    scan("inf-weights", ck / "inf.safetensors", "Inf", "--weights-only")
    ints = dict(tensors, **{weight: tensors[weight].round().to(torch.int64)})
    safetensors.torch.save_file(ints, str(ck / "int.safetensors"), metadata=metadata)
    scan("integer-weights", ck / "int.safetensors", "dtype", "--weights-only")
    cases.append(
        Case(
            "mismatched-architecture",
            ["scan", str(CNN), "--arch", "test_resnet", "--weights-only", *scan_out],
            "does not fit",
        )
    )
    scan("shape-mismatch", CNN, "shape", "--arch-args", '{"width": 8}', "--weights-only")
    evil_meta = dict(metadata, arch="os.system")
    safetensors.torch.save_file(tensors, str(ck / "evil-meta.safetensors"), metadata=evil_meta)
    scan("metadata-names-a-function", ck / "evil-meta.safetensors", "class")

    # pickles
    marker = root / "code-was-run"
    torch.save({"state_dict": tensors, "x": _Payload(marker)}, ck / "evil.pt")
    cases.append(
        Case(
            "pickle-that-runs-code",
            ["scan", str(ck / "evil.pt"), *cnn, *scan_out],
            "weights-only",
            marker=marker,
        )
    )
    (ck / "garbage.pt").write_bytes(bytes(range(256)) * 16)
    scan("pt-garbage", ck / "garbage.pt", "PyTorch")

    # datasets
    def data(name: str, path: Path | str, keyword: str) -> None:
        cases.append(
            Case(name, ["scan", str(CNN), *cnn, "--data", str(path), *TINY, *scan_out], keyword)
        )

    x, y = _digits_like()
    data("data-missing", dd / "absent.npz", "not found")
    (dd / "garbage.npz").write_bytes(b"PK not really a zip")
    data("data-not-npz", dd / "garbage.npz", "npz")
    (dd / "folder.npz").mkdir(exist_ok=True)
    data("directory-as-npz", dd / "folder.npz", "folder")
    (dd / "nosplits").mkdir(exist_ok=True)
    data("data-folder-without-splits", dd / "nosplits", "train/")
    data(
        "data-wrong-shape",
        _npz(dd / "shape.npz", x_train=np.zeros((20, 3, 5, 5), np.float32), y_train=y),
        "shape",
    )
    data("data-out-of-range", _npz(dd / "range.npz", x_train=x * 3, y_train=y), "range")
    x_nan = x.copy()
    x_nan[0, 0, 0, 0] = np.nan
    data("data-nan", _npz(dd / "nan.npz", x_train=x_nan, y_train=y), "NaN")
    data("labels-beyond-model", _npz(dd / "labels.npz", x_train=x, y_train=y + 10), "label")
    data("negative-labels", _npz(dd / "neg.npz", x_train=x, y_train=y - 1), "negative")
    data("labels-not-integers", _npz(dd / "frac.npz", x_train=x, y_train=y + 0.5), "integer")
    data("label-count-mismatch", _npz(dd / "count.npz", x_train=x, y_train=y[:5]), "labels")
    data(
        "empty-split",
        _npz(dd / "empty.npz", x_train=x[:0], y_train=y[:0], x_test=x, y_test=y),
        "empty",
    )
    data("no-splits", _npz(dd / "keys.npz", images=x, labels=y), "x_train")
    data(
        "object-arrays",
        _npz(dd / "objects.npz", x_train=np.array([x[0], "s"], dtype=object), y_train=y[:2]),
        "objects",
    )
    data("data-too-large", _npz_claiming(dd / "huge.npz", (10**9, 3, 32, 32)), "limit")

    # settings out of range
    def setting(name: str, keyword: str, *option: str) -> None:
        cases.append(Case(name, ["scan", str(CNN), *cnn, *TINY, *option, *scan_out], keyword))

    setting("eps-negative", "eps", "--eps", "-0.1")
    setting("eps-beyond-range", "eps", "--eps", "2")
    setting("eps-divides-by-zero", "zero", "--eps", "1/0")
    setting("eps-nan", "eps", "--eps", "nan")
    setting("steps-zero", "steps", "--steps", "0")
    setting("tol-zero", "tol", "--tol", "0")
    setting("tol-above-one", "tol", "--tol", "1.5")
    setting("delta-one", "delta", "--delta", "1")
    setting("batch-size-zero", "batch_size", "--batch-size", "0")
    setting("arch-args-not-json", "arch-args", "--arch-args", "{nope")

    # config files in the working folder (read by scan and gate)
    toml_cases = {
        "config-invalid-toml": ({"wciaudit.toml": "max_wci = = 3\n"}, "TOML"),
        "config-unknown-key": ({"wciaudit.toml": "max_wcii = 3\n"}, "unknown"),
        "config-wrong-type": ({"wciaudit.toml": 'max_wci = "high"\n'}, "number"),
        "pyproject-bad-table": ({"pyproject.toml": "[tool]\nwciaudit = 3\n"}, "table"),
        "pyproject-invalid-toml": ({"pyproject.toml": "[tool.wciaudit\nmax_wci = 1\n"}, "TOML"),
    }
    for name, (files, keyword) in toml_cases.items():
        cases.append(
            Case(
                f"scan-{name}",
                ["scan", str(CNN), *cnn, "--weights-only", *scan_out],
                keyword,
                cwd_files=files,
            )
        )

    # saved results
    good = root / "results"
    good.mkdir(exist_ok=True)
    future = good / "future.json"
    future.write_text(json.dumps({"schema_version": 2, "tool_version": "9.0", "wci": 1.0}))
    (good / "not.json").write_text("{not json")
    (good / "list.json").write_text("[1, 2]")
    (good / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    malformed = good / "malformed.json"
    malformed.write_text(json.dumps({"schema_version": 1, "checkpoint": "a string"}))
    gate_out = ["--max-wci", "1", "--json", "{out}/result.json", "-q"]
    for name, path, keyword in (
        ("future-schema", future, "schema_version"),
        ("result-not-json", good / "not.json", "JSON"),
        ("result-not-object", good / "list.json", "object"),
        ("result-not-utf8", good / "binary.json", "result file"),
        ("result-malformed", malformed, "malformed"),
        ("result-missing", good / "absent.json", "not found"),
    ):
        cases.append(
            Case(f"report-{name}", ["report", str(path), "-o", "{out}/report.html", "-q"], keyword)
        )
        cases.append(Case(f"gate-{name}", ["gate", str(path), *gate_out], keyword))
    ok_result = good / "ok.json"
    ok_result.write_text(json.dumps({"schema_version": 1, "wci": 1.0, "wci_se": 0.1}))
    for name, (files, keyword) in toml_cases.items():
        cases.append(
            Case(
                f"gate-{name}",
                ["gate", str(ok_result), "--json", "{out}/result.json", "-q"],
                keyword,
                cwd_files=files,
            )
        )
    return cases


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[0])
        print("usage: python tests/corpus/make_corpus.py DIR")
        return 2
    for case in build(Path(argv[1])):
        print(f"{case.name:36s} wciaudit {' '.join(case.args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
