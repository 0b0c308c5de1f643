"""Scan settings: one frozen dataclass passed down, defaults defined once (SPEC: threat model).

Example:
    >>> cfg = ScanConfig(eps=parse_eps("8/255"), steps=10)
    >>> round(cfg.alpha, 6)
    0.007843
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any

from .errors import ConfigError

#: the threat model when neither a flag nor the checkpoint's metadata gives one
DEFAULT_EPS = 8 / 255
#: budget for one chunk of per-example Jacobians in the exact curvature route (bytes)
DEFAULT_MEMORY_BYTES = 512 * 2**20


class Attack(str, Enum):
    """Attacks robust accuracy comes from: PGD-K with random start, FGSM (one step,
    alpha = eps, no random start), APGD-CE (100 steps), APGD-T (DLR, 9 targets) or
    the standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square)."""

    pgd = "pgd"
    fgsm = "fgsm"
    apgd_ce = "apgd-ce"
    apgd_t = "apgd-t"
    autoattack = "autoattack"


class Norm(str, Enum):
    """Threat-model norm ball."""

    linf = "linf"
    l2 = "l2"


class CurvatureMethod(str, Enum):
    """How per-layer traces are measured: `auto` picks, per layer, the cheapest of the
    exact Gauss-Newton route, the sampled-label Gauss-Newton route (both where the
    network is piecewise linear in the layer) and Hutchinson; the others force one
    (`hutchpp`: Hutch++ on every layer, never picked by `auto`)."""

    auto = "auto"
    hutchinson = "hutchinson"
    ggn = "ggn"
    mc_ggn = "mc-ggn"
    hutchpp = "hutchpp"


_FRACTION = re.compile(
    r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:/\s*([0-9]*\.?[0-9]+))?\s*$"
)


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


def parse_norm(text: str | Norm) -> Norm:
    """``linf`` / ``l2`` (case-insensitive; ``inf``, ``Linf``, ``L_inf``, ``2`` accepted).

    Raises:
        ConfigError: for any other value.
    """
    if isinstance(text, Norm):
        return text
    key = str(text).strip().lower().replace("_", "").replace("-", "")
    aliases = {"linf": Norm.linf, "inf": Norm.linf, "l2": Norm.l2, "2": Norm.l2}
    if key not in aliases:
        raise ConfigError(f"norm must be one of linf, l2, got {text!r}")
    return aliases[key]


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
        attack: ``pgd``, ``fgsm``, ``apgd-ce``, ``apgd-t`` or ``autoattack``: where robust
            accuracy comes from. The robust loss and the Hessian points come from the
            loss-maximising attack: the attack itself for PGD / FGSM, else APGD-CE.
        norm: ``linf`` (default, SPEC) or ``l2``.
        steps: PGD iterations K (FGSM forces 1).
        step_size: PGD step alpha; ``None`` means 2.5 * eps / K (FGSM: eps).
        restarts: PGD restarts R; the per-example worst loss is kept.
        seed: seeds attack starts, subsets and probes; same seed, same numbers.
        tol: target relative standard error of WCI; probes go where they cut WCI's
            variance most.
        layer_tol: also hold every per-layer trace to this relative SE (None: only WCI).
        k_labels: labels sampled per example in the first round of the sampled-label
            Gauss-Newton route (>= 2); more are drawn where a layer's tolerance asks.
        max_probes: probe cap per layer for Hutchinson.
        min_probes: Hutchinson's SE has min_probes - 1 degrees of freedom before the
            stop rule may fire (a probe is one vector per group of the Hessian subset:
            with 16 groups the first round is 2 probes, under the WCI target too).
        hessian_samples: number of train examples the Hessian is taken over.
        delta: confidence of the PAC-Bayes confidence term.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``float32`` or ``float64`` for attack and curvature.
        batch_size: examples per forward pass.
        train_samples / test_samples: seeded stratified subsets (None = all).
        lo / hi: valid input range.
        curvature: ``auto``, ``hutchinson`` or ``ggn``.
        memory_bytes: budget for one chunk of per-example Jacobians; it decides which
            layers take the exact Gauss-Newton route (bytes).
        masking_samples: test examples the gradient-masking checks run on (0: off; the
            random-output check runs on every scan all the same).
        attack_spread: re-attack the Hessian subset with a second seed and add the
            traces' spread over the attack's random starts to their SE.
        threads: torch's CPU threads during the scan, put back afterwards; None leaves
            torch's setting as it is (the command line chooses a number by the policy
            of :mod:`wciaudit.threads`). Not part of a result's identity: the track
            cache ignores it.

    ``eps`` and ``norm`` here are always set: :func:`wciaudit.scan` resolves an unset
    threat model (``eps=None`` / ``norm=None``) from the checkpoint's metadata before it
    builds this config.
    """

    eps: float = DEFAULT_EPS
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
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    masking_samples: int = 64
    layer_tol: float | None = None
    k_labels: int = 2
    attack_spread: bool = True
    threads: int | None = None

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
        _check_int("memory_bytes", self.memory_bytes, 1, 2**60)
        _check_int("masking_samples", self.masking_samples, 0, 1_000_000_000)
        _check_int("k_labels", self.k_labels, 2, 1_000_000)
        if self.threads is not None:
            _check_int("threads", self.threads, 1, 4096)
        if self.layer_tol is not None and not (0 < self.layer_tol < 1):
            raise ConfigError(f"layer_tol must be in (0, 1), got {self.layer_tol!r}")
        for name in ("train_samples", "test_samples"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1, 1_000_000_000)
        if self.step_size is not None and (
            not math.isfinite(self.step_size)
            or self.step_size < 0
            or (self.step_size == 0 and self.eps > 0)
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


@dataclass(frozen=True)
class LoadOptions:
    """How to read a checkpoint; every field ``None`` means "from the checkpoint".

    Precedence for each value: this option > the checkpoint's metadata > timm's config
    > the default (:func:`wciaudit.checkpoints.resolve`).

    Attributes:
        arch: a timm model name, ``models.py:ClassName``, ``package.module:ClassName``
            or ``models.py``.
        arch_args: constructor keyword arguments, a dict or a JSON object string
            (stored as a dict).
        num_classes: the number of classes.
        mean, std: per-channel input normalisation in raw input units (tuples).
        input_size: the shape of one input, ``(C, H, W)`` for images, ``(C, L)`` for
            signals, ``(F,)`` for vectors; overrides timm's config.
        weights_only: report weight norms and the parameter inventory alone.

    Raises:
        ConfigError: a malformed option, with what is allowed.
    """

    arch: str | None = None
    arch_args: Mapping[str, Any] | str | None = None
    num_classes: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    input_size: Sequence[int] | None = None
    weights_only: bool = False

    def __post_init__(self) -> None:
        if self.arch is not None and (not isinstance(self.arch, str) or not self.arch.strip()):
            raise ConfigError("arch must be a timm model name or models.py:ClassName")
        object.__setattr__(self, "arch_args", _parse_arch_args(self.arch_args))
        if self.num_classes is not None:
            _check_int("num_classes", self.num_classes, 1, 10**9)
        mean = None if self.mean is None else _check_stats(self.mean, "mean")
        std = None if self.std is None else _check_stats(self.std, "std")
        if (mean is None) != (std is None):
            raise ConfigError("give both mean and std, or neither")
        if mean is not None and std is not None and len(mean) != len(std):
            raise ConfigError(
                f"mean has {len(mean)} values but std has {len(std)}; give one per channel"
            )
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if self.input_size is not None:
            object.__setattr__(self, "input_size", _check_input_size(self.input_size))
        if not isinstance(self.weights_only, bool):
            raise ConfigError(f"weights_only must be True or False, got {self.weights_only!r}")


def _parse_arch_args(arch_args: Mapping[str, Any] | str | None) -> dict[str, Any] | None:
    if arch_args is None:
        return None
    if isinstance(arch_args, Mapping):
        return dict(arch_args)
    if isinstance(arch_args, str):
        try:
            value = json.loads(arch_args)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"--arch-args is not valid JSON ({exc.msg} at character {exc.pos}); "
                """expected an object such as '{"in_chans": 1}'"""
            ) from None
        if not isinstance(value, dict):
            raise ConfigError(
                """--arch-args must be a JSON object such as '{"in_chans": 1}', """
                f"got a {type(value).__name__}"
            )
        return value
    raise ConfigError(
        f"arch_args must be a dict or a JSON object string, got {type(arch_args).__name__}"
    )


#: the settings that, left unset, come from the checkpoint's metadata (SPEC: threat model)
THREAT_MODEL = ("eps", "norm")


def config_from_settings(
    config: ScanConfig | None, settings: dict[str, Any]
) -> tuple[ScanConfig, frozenset[str]]:
    """The config of :func:`wciaudit.scan` or ``track``: ``config`` with the keyword
    ``settings`` on top, or a ScanConfig made of them; and which of ``eps`` / ``norm``
    are unset, so that each checkpoint's metadata decides them.

    A threat-model setting is unset when passed as None, or, without ``config``, when
    not passed at all; a ``config`` given sets both (its eps and norm count as flags).

    Raises:
        ConfigError: an unknown setting (without ``config``) or an invalid value.
    """
    unset = {k for k in THREAT_MODEL if k in settings and settings[k] is None}
    settings = {k: v for k, v in settings.items() if k not in unset}
    if config is not None:
        return (config.with_(**settings) if settings else config), frozenset(unset)
    known = {f.name for f in fields(ScanConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    unset |= {k for k in THREAT_MODEL if k not in settings}
    return ScanConfig(**settings), frozenset(unset)


def _check_stats(values: Any, name: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name} must be a list of numbers, one per channel, got {values!r}"
        ) from None
    if not out or not all(math.isfinite(v) for v in out):
        raise ConfigError(f"{name} must be finite numbers, one per channel, got {list(out)}")
    if name == "std" and any(v <= 0 for v in out):
        raise ConfigError(f"std must be positive, got {list(out)}")
    return out


def _check_input_size(values: Any) -> tuple[int, ...]:
    try:
        size = tuple(values)
    except TypeError:
        size = ()
    if not size or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise ConfigError(
            "input_size must be positive integers, the shape of one input: (C, H, W) for "
            f"images, (C, L) for signals, (F,) for vectors; got {values!r}"
        )
    return size


__all__ = [
    "Attack",
    "Norm",
    "CurvatureMethod",
    "ScanConfig",
    "LoadOptions",
    "DEFAULT_EPS",
    "DEFAULT_MEMORY_BYTES",
    "THREAT_MODEL",
    "config_from_settings",
    "parse_eps",
    "parse_norm",
    "format_eps",
]
