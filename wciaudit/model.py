"""The audited model: input normalisation inside, eval mode, layer inventory (SPEC: model, layers).

Attacks and epsilons live in raw input space [lo, hi]; the checkpoint's mean/std is
applied inside :class:`AuditedModel`, as RobustBench does it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


class AuditedModel(nn.Module):
    """``f(x) = model((x - mean) / std)`` for x in raw input units.

    Args:
        model: the classifier (logits out).
        mean, std: per-channel normalisation, or ``None`` for none.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        if mean is not None and std is not None:
            m = torch.as_tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
            s = torch.as_tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
            if torch.any(s <= 0):
                from .errors import ConfigError

                raise ConfigError(f"std must be positive, got {list(std)}")
            self.register_buffer("mean", m, persistent=False)
            self.register_buffer("std", s, persistent=False)
        else:
            self.mean = None
            self.std = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            x = (x - self.mean.view(shape)) / self.std.view(shape)
        return self.model(x)


@dataclass(frozen=True)
class Layer:
    """A WCI layer: a parameter named ``*.weight`` with ``dim() >= 2`` (SPEC: layers)."""

    name: str
    param: nn.Parameter

    @property
    def shape(self) -> list[int]:
        return list(self.param.shape)

    @property
    def numel(self) -> int:
        return self.param.numel()


def frob_norm(param: torch.Tensor) -> float:
    """||W||_F in float64 (SPEC: Layers, norms, curvature)."""
    return float(param.detach().double().norm())


def is_layer_weight(name: str, param: torch.Tensor) -> bool:
    """SPEC: every parameter named ``*.weight`` with ``dim() >= 2`` is a layer."""
    return (name == "weight" or name.endswith(".weight")) and param.dim() >= 2


def weight_layers(model: nn.Module) -> list[Layer]:
    """Layers in model order. Tied weights appear once, under their first name
    (``named_parameters`` de-duplicates shared tensors)."""
    return [Layer(n, p) for n, p in model.named_parameters() if is_layer_weight(n, p)]


def other_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter, str]]:
    """Parameters that are not WCI layers, with a coarse kind for the inventory."""
    out = []
    for name, p in model.named_parameters():
        if is_layer_weight(name, p):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias":
            kind = "bias"
        elif leaf == "weight":
            kind = "norm/scale"
        elif "pos" in leaf or "embed" in leaf:
            kind = "embedding"
        elif "token" in leaf:
            kind = "token"
        else:
            kind = "other"
        out.append((name, p, kind))
    return out


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def no_tf32() -> Iterator[None]:
    """Curvature and attacks in full fp32 on GPU (TF32 off), restored afterwards.

    cuDNN runs convolutions in TF32 by default (about 1e-3 relative), so every public
    entry point that runs the model for a figure (``layer_traces``, the attacks,
    ``WCIMonitor.measure``) enters this, as a context or a decorator (``@no_tf32()``).
    """
    matmul = torch.backends.cuda.matmul.allow_tf32
    cudnn = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


#: the phrase of torch's warning for an op without a deterministic CUDA kernel
_NONDETERMINISTIC = "does not have a deterministic implementation"


@contextmanager
def deterministic_kernels(device: torch.device) -> Iterator[list[str]]:
    """On CUDA: deterministic algorithms and cuDNN kernels, restored afterwards.

    Atomic-add kernels (pooling and interpolation backward, some cuDNN convolution
    algorithms, scatter/index_add) sum in a varying order; PGD's sign() turns a last-bit
    difference into a different step. Inside, torch picks deterministic kernels where it
    has them (``warn_only``: an op without one still runs); the yielded list is filled,
    when the context exits, with the messages of those ops, for the report. cuBLAS is repeatable only when the
    process was started with ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (torch warns otherwise,
    and that warning is collected too). On the CPU nothing is changed: its kernels are
    deterministic already, and deterministic mode would fill every new tensor.
    Warnings of any other kind are passed on unchanged.
    """
    found: list[str] = []
    if device.type != "cuda":
        yield found
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield found
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2:]
        for w in caught:
            text = str(w.message)
            if _NONDETERMINISTIC in text or "CUBLAS_WORKSPACE_CONFIG" in text:
                line = text.strip().splitlines()[0]
                if line not in found:
                    found.append(line)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> first CUDA device if present, else CPU. Unknown/unavailable -> ConfigError."""
    from .errors import ConfigError

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} asked for, but no CUDA device is available")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {spec!r} does not exist; {torch.cuda.device_count()} CUDA device(s) found"
            )
        return dev
    raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
