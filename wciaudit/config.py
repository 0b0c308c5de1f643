"""Scan settings: one frozen dataclass passed down, defaults defined once (SPEC: threat model).

Example:
    >>> cfg = ScanConfig(eps=parse_eps("8/255"), steps=10)
    >>> round(cfg.alpha, 6)
    0.007843
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any

from .errors import ConfigError


class Attack(str, Enum):
    """Attacks: PGD-K with random start, or FGSM (one step, alpha = eps, no random start)."""

    pgd = "pgd"
    fgsm = "fgsm"


class Norm(str, Enum):
    """Threat-model norm ball."""

    linf = "linf"
    l2 = "l2"


class CurvatureMethod(str, Enum):
    """How per-layer traces are measured: `auto` picks the exact Gauss-Newton route per
    layer where it is exact and cheaper, else Hutchinson with block-restricted probes."""

    auto = "auto"
    hutchinson = "hutchinson"
    ggn = "ggn"


_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:/\s*([0-9]*\.?[0-9]+))?\s*$")


def parse_eps(text: str | float | int) -> float:
    """Parse an attack radius: ``"8/255"``, ``"0.03"``, ``"3e-2"`` or a number.

    Raises:
        ConfigError: if the text is not a non-negative finite number or fraction.
    """
    if isinstance(text, bool):
        raise ConfigError(f"eps must be a number or a fraction like 8/255, got {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        if str(text).strip().startswith("-"):
            raise ConfigError(f"eps must be >= 0, got {text!r}")
        match = _FRACTION.match(str(text))
        if not match:
            raise ConfigError(f"eps must be a number or a fraction like 8/255, got {text!r}")
        num = float(match.group(1))
        den = float(match.group(2)) if match.group(2) is not None else 1.0
        if den == 0:
            raise ConfigError(f"eps {text!r} divides by zero")
        value = num / den
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"eps must be finite and >= 0, got {text!r}")
    return value


def format_eps(eps: float) -> str:
    """Show eps as ``8/255`` where it is a whole number of 255ths (to 1e-9), as a short
    decimal where one is exact (``0.1``), else as a fraction of a power of two or ten."""
    num = eps * 255
    if round(num) % 255 != 0 and abs(num - round(num)) < 1e-9 * max(1.0, num):
        return f"{round(num)}/255"
    short = f"{eps:.6g}"
    if float(short) == eps:
        return short
    for den in (2, 4, 8, 16, 32, 64, 128, 256, 1000):
        num = eps * den
        if round(num) != 0 and abs(num - round(num)) < 1e-9 * max(1.0, num):
            return f"{round(num)}/{den}"
    return short


@dataclass(frozen=True)
class ScanConfig:
    """Every setting of a scan; all of it is written to the JSON ``config`` block.

    Attributes:
        eps: radius of the threat ball in raw input units (data range [lo, hi]).
        attack: ``pgd`` or ``fgsm``.
        norm: ``linf`` (default, SPEC) or ``l2``.
        steps: PGD iterations K (FGSM forces 1).
        step_size: PGD step alpha; ``None`` means 2.5 * eps / K (FGSM: eps).
        restarts: PGD restarts R; the per-example worst loss is kept.
        seed: seeds attack starts, subsets and probes; same seed, same numbers.
        tol: target relative standard error of every per-layer trace.
        max_probes: probe cap per layer for Hutchinson.
        min_probes: probes per layer before the stop rule may fire.
        hessian_samples: number of train examples the Hessian is taken over.
        delta: confidence of the PAC-Bayes confidence term.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``float32`` or ``float64`` for attack and curvature.
        batch_size: examples per forward pass.
        train_samples / test_samples: seeded stratified subsets (None = all).
        lo / hi: valid input range.
        curvature: ``auto``, ``hutchinson`` or ``ggn``.
    """

    eps: float = 8 / 255
    attack: Attack = Attack.pgd
    norm: Norm = Norm.linf
    steps: int = 10
    step_size: float | None = None
    restarts: int = 1
    seed: int = 0
    tol: float = 0.05
    max_probes: int = 200
    min_probes: int = 10
    hessian_samples: int = 1000
    delta: float = 0.05
    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = 128
    train_samples: int | None = None
    test_samples: int | None = None
    lo: float = 0.0
    hi: float = 1.0
    curvature: CurvatureMethod = CurvatureMethod.auto

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", parse_eps(self.eps))
        for name, enum in (("attack", Attack), ("norm", Norm), ("curvature", CurvatureMethod)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                allowed = ", ".join(e.value for e in enum)
                raise ConfigError(f"{name} must be one of {allowed}, got {value!r}") from None
        if not self.lo < self.hi:
            raise ConfigError(f"the data range needs lo < hi, got [{self.lo}, {self.hi}]")
        if self.norm is Norm.linf and self.eps > (self.hi - self.lo):
            raise ConfigError(
                f"eps {self.eps:g} is larger than the data range [{self.lo:g}, {self.hi:g}]; "
                "use a fraction of it, e.g. --eps 8/255"
            )
        _check_int("steps", self.steps, 1, 10_000)
        _check_int("restarts", self.restarts, 1, 1_000)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("max_probes", self.max_probes, 2, 1_000_000)
        _check_int("min_probes", self.min_probes, 2, 1_000_000)
        _check_int("hessian_samples", self.hessian_samples, 1, 100_000_000)
        _check_int("batch_size", self.batch_size, 1, 1_000_000)
        for name in ("train_samples", "test_samples"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1, 1_000_000_000)
        if self.step_size is not None and (
            not math.isfinite(self.step_size) or self.step_size < 0 or (self.step_size == 0 and self.eps > 0)
        ):
            raise ConfigError(f"step_size must be > 0, got {self.step_size!r}")
        if not (0 < self.tol < 1):
            raise ConfigError(f"tol must be in (0, 1), got {self.tol!r}")
        if not (0 < self.delta < 1):
            raise ConfigError(f"delta must be in (0, 1), got {self.delta!r}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.min_probes > self.max_probes:
            object.__setattr__(self, "min_probes", self.max_probes)

    @property
    def alpha(self) -> float:
        """PGD step size actually used (SPEC: default 2.5 * eps / K; FGSM: eps)."""
        if self.attack is Attack.fgsm:
            return self.eps
        if self.step_size is not None:
            return self.step_size
        return 2.5 * self.eps / self.steps

    @property
    def effective_steps(self) -> int:
        return 1 if self.attack is Attack.fgsm else self.steps

    @property
    def effective_restarts(self) -> int:
        return 1 if self.attack is Attack.fgsm else self.restarts

    def with_(self, **changes: Any) -> ScanConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON ``config`` block (SPEC keys first, extras after)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("attack", "norm", "curvature"):
            d[key] = d[key].value
        d["steps"] = self.effective_steps
        d["restarts"] = self.effective_restarts
        d["step_size"] = self.alpha
        d["eps_text"] = format_eps(self.eps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanConfig:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        return cls(**kwargs)


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


__all__ = ["Attack", "Norm", "CurvatureMethod", "ScanConfig", "parse_eps", "format_eps"]
