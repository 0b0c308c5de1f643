"""The torch lower bound in pyproject.toml covers every version-gated torch API used.

Each entry is an API whose first torch release is known (from torch's release notes);
the package must not use one that its declared lower bound lacks. Add an entry when
code starts to use a newer API, and raise the bound with it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# API (as spelled in the source) -> the first torch (major, minor) that has it
FIRST_RELEASE = {
    "torch.nn.attention": (2, 3),  # sdpa_kernel, SDPBackend
    "torch.func": (2, 0),
    "torch.compile": (2, 0),
    "torch.cuda.OutOfMemoryError": (1, 13),
    "is_grads_batched": (1, 11),
    "torch.serialization.add_safe_globals": (2, 4),
    "torch.nn.RMSNorm": (2, 4),
    "torch.library.custom_op": (2, 4),
    "torch.nn.attention.flex_attention": (2, 5),
}


def _lower_bound(package: str) -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(rf'"{package}>=(\d+)\.(\d+)', text)
    assert match, f"no {package}>= lower bound in pyproject.toml"
    return int(match.group(1)), int(match.group(2))


def _source() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "wciaudit").rglob("*.py"))


def test_the_torch_bound_covers_the_apis_used() -> None:
    bound = _lower_bound("torch")
    source = _source()
    used = {api: v for api, v in FIRST_RELEASE.items() if api in source}
    assert "torch.nn.attention" in used  # the table is read against the real source
    too_new = {api: v for api, v in used.items() if v > bound}
    assert not too_new, f"torch>={bound} lacks {too_new}"
    # and the bound is not higher than the APIs need, so older GPU setups still install
    assert bound == max(used.values())


def test_torchvision_matches_the_torch_bound() -> None:
    # torchvision 0.N pairs with torch 2.(N - 15) from torch 2.0 on
    major, minor = _lower_bound("torch")
    assert major == 2
    assert _lower_bound("torchvision") == (0, minor + 15)
