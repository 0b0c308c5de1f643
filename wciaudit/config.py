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
from .setting import (
    Cli,
    IntRange,
    IsBool,
    Matches,
    OneOf,
    OpenInterval,
    Parsed,
    apply_checks,
    document,
    setting,
)

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


#: the threat-model norm when neither a flag nor the checkpoint's metadata gives one
DEFAULT_NORM = Norm.linf


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


_THREADS_HELP = (
    "CPU threads for torch during the scan, put back afterwards. Default: the command line "
    "chooses per run from the CPUs this process may use (affinity, cgroup quota) less the load "
    "of other processes, keeping OMP_NUM_THREADS when set; the library (None) leaves torch's "
    "setting as it is."
)


@document
@dataclass(frozen=True)
class ScanConfig:
    """Every setting of a scan; all of it is written to the JSON ``config`` block.

    Each field carries its default, help text (``--help`` shows the same) and check
    (:func:`wciaudit.setting.setting`); the rules between fields are checked here.
    ``eps`` and ``norm`` left None are the threat model "unset": :func:`wciaudit.scan`
    takes each from the checkpoint's metadata (keys ``eps``, ``norm``), else the default
    (:data:`DEFAULT_EPS`, linf), and scans with a config where both are set
    (:meth:`with_threat_model`); ``config["threat_model_source"]`` says which.
    ``threads`` is not part of a result's identity: the track cache ignores it.
    """

    eps: float | None = setting(
        None,
        help="Attack radius in input units: 8/255, 0.03, ... (default: the checkpoint's "
        "metadata 'eps', else 8/255).",
        check=Parsed(parse_eps, "a number >= 0 or a fraction like 8/255"),
        cli=Cli(text=True, show_default=False),
    )
    attack: Attack = setting(
        Attack.pgd,
        help="Where robust accuracy comes from. pgd: random start + K steps; fgsm: one step of "
        "size eps; apgd-ce, apgd-t: APGD (100 steps); autoattack: standard AutoAttack "
        "(APGD-CE, APGD-T, FAB-T, Square 5000). The robust loss and the Hessian points come "
        "from PGD/FGSM, or APGD-CE for the others.",
        check=OneOf(Attack),
    )
    norm: Norm | None = setting(
        None,
        help="Threat-model norm (default: the checkpoint's metadata 'norm', else linf).",
        check=OneOf(Norm),
        cli=Cli(show_default=False),
    )
    steps: int = setting(10, help="PGD steps K.", check=IntRange(1, 10_000))
    step_size: float | None = setting(
        None, help="PGD step alpha (default: 2.5*eps/K).", cli=Cli(show_default=False)
    )
    restarts: int = setting(
        1, help="PGD restarts; each example keeps its worst loss.", check=IntRange(1, 1_000)
    )
    seed: int = setting(
        0, help="Seed for attack starts, subsets and probes.", check=IntRange(0, 2**63 - 1)
    )
    tol: float = setting(
        0.05,
        help="Target relative standard error of WCI (probes go where they cut its variance most).",
        check=OpenInterval(0, 1),
    )
    max_probes: int = setting(
        200, help="Hutchinson probe cap per layer.", check=IntRange(2, 1_000_000)
    )
    min_probes: int = setting(
        10,
        help="Hutchinson's SE has min_probes - 1 degrees of freedom before the stop rule may "
        "fire (a probe is one vector per group of the Hessian subset: with 16 groups the first "
        "round is 2 probes, under the WCI target too); at most max_probes.",
        check=IntRange(2, 1_000_000),
        cli=None,
    )
    hessian_samples: int = setting(
        1000,
        help="Train examples the Hessian is taken over (a seeded stratified subset).",
        check=IntRange(1, 100_000_000),
    )
    delta: float = setting(0.05, help="PAC-Bayes confidence delta.", check=OpenInterval(0, 1))
    device: str = setting(
        "auto",
        help="auto | cpu | cuda | cuda:N",
        check=Matches(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N"),
    )
    dtype: str = setting(
        "float32",
        help="float32 | float64 (small models).",
        check=Matches("float32|float64", "float32 or float64"),
    )
    batch_size: int = setting(128, help="Examples per forward pass.", check=IntRange(1, 1_000_000))
    train_samples: int | None = setting(
        None,
        help="Seeded stratified subset of the train split.",
        check=IntRange(1, 1_000_000_000),
    )
    test_samples: int | None = setting(
        None,
        help="Seeded stratified subset of the test split.",
        check=IntRange(1, 1_000_000_000),
    )
    lo: float = setting(0.0, help="Lowest valid input value (data range).")
    hi: float = setting(1.0, help="Highest valid input value (data range).")
    curvature: CurvatureMethod = setting(
        CurvatureMethod.auto,
        help="auto: per layer the cheapest of exact Gauss-Newton (ggn), sampled-label "
        "Gauss-Newton (mc-ggn; both where the network is piecewise linear in the layer) and "
        "Hutchinson; the others force one route (hutchpp: Hutch++ on every layer, on "
        "request only; its SE covers the probes alone).",
        check=OneOf(CurvatureMethod),
    )
    memory_bytes: int = setting(
        DEFAULT_MEMORY_BYTES,
        help="Budget for one chunk of per-example Jacobians, in bytes; it decides which layers "
        "take the exact Gauss-Newton route.",
        check=IntRange(1, 2**60),
        cli=None,
    )
    masking_samples: int = setting(
        64,
        help="Test examples the gradient-masking checks run on (0: only the random-output "
        "check, on 8).",
        check=IntRange(0, 1_000_000_000),
    )
    layer_tol: float | None = setting(
        None,
        help="Also hold every layer's trace to this relative standard error.",
        check=OpenInterval(0, 1),
        cli=Cli(show_default=False),
    )
    k_labels: int = setting(
        2,
        help="Labels sampled per example in the first round of the mc-ggn route (more where "
        "the tolerance asks).",
        check=IntRange(2, 1_000_000),
    )
    attack_spread: bool = setting(
        True,
        help="Attack the Hessian subset again from other random starts, so that SEs cover the "
        "attack's starts (about doubles the curvature time).",
    )
    threads: int | None = setting(
        None, help=_THREADS_HELP, check=IntRange(1, 4096), cli=Cli(show_default=False)
    )

    def __post_init__(self) -> None:
        apply_checks(self)
        if not self.lo < self.hi:
            raise ConfigError(f"the data range needs lo < hi, got [{self.lo}, {self.hi}]")
        if self.norm is Norm.linf and self.eps is not None and self.eps > (self.hi - self.lo):
            raise ConfigError(
                f"eps {self.eps:g} is larger than the data range [{self.lo:g}, {self.hi:g}]; "
                "use a fraction of it, e.g. --eps 8/255"
            )
        if self.step_size is not None and (
            not math.isfinite(self.step_size)
            or self.step_size < 0
            or (self.step_size == 0 and (self.eps is None or self.eps > 0))
        ):
            raise ConfigError(f"step_size must be > 0, got {self.step_size!r}")
        if self.min_probes > self.max_probes:
            object.__setattr__(self, "min_probes", self.max_probes)

    @property
    def threat_model_set(self) -> bool:
        """Are both eps and norm given (False: the checkpoint's metadata decides one)?"""
        return self.eps is not None and self.norm is not None

    def with_threat_model(self, eps: float, norm: Norm) -> ScanConfig:
        """This config with eps and norm set (the values the scan resolved)."""
        return replace(self, eps=eps, norm=norm)

    def with_default_threat_model(self) -> ScanConfig:
        """Unset eps / norm at their defaults (:data:`DEFAULT_EPS`, linf): for callers
        with no checkpoint to take them from (an attack called on its own, the monitor).
        A scan resolves them from the checkpoint first (:func:`wciaudit.scan`)."""
        if self.threat_model_set:
            return self
        eps = DEFAULT_EPS if self.eps is None else self.eps
        return self.with_threat_model(eps, self.norm or DEFAULT_NORM)

    @property
    def alpha(self) -> float:
        """PGD step size actually used (SPEC: default 2.5 * eps / K; FGSM: eps).

        Raises:
            ConfigError: eps is unset (the scan resolves it first).
        """
        if self.eps is None:
            raise ConfigError("eps is unset: the scan takes it from the checkpoint first")
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
            d[key] = None if d[key] is None else d[key].value
        d["steps"] = self.effective_steps
        d["restarts"] = self.effective_restarts
        d["step_size"] = self.alpha if self.eps is not None else self.step_size
        d["eps_text"] = None if self.eps is None else format_eps(self.eps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanConfig:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        return cls(**kwargs)


@document
@dataclass(frozen=True)
class LoadOptions:
    """How to read a checkpoint; every field ``None`` means "from the checkpoint".

    Precedence for each value: this option > the checkpoint's metadata > timm's config
    > the default (:func:`wciaudit.checkpoints.resolve`). ``mean`` and ``std`` come
    together, one value per channel each.

    Raises:
        ConfigError: a malformed option, with what is allowed.
    """

    arch: str | None = setting(
        None,
        help="timm model name, torchvision:<builder> (e.g. torchvision:resnet18), or a custom "
        "class: models.py:ClassName, package.module:ClassName, or models.py (class from the "
        "metadata key 'arch').",
    )
    arch_args: Mapping[str, Any] | str | None = setting(
        None,
        help="""Constructor arguments as JSON, e.g. '{"width": 16}'.""",
        check=Parsed(lambda value: _parse_arch_args(value), "a dict or a JSON object"),
        cli=Cli(text=True),
    )
    num_classes: int | None = setting(
        None, help="Number of classes (default: from the checkpoint).", check=IntRange(1, 10**9)
    )
    mean: Sequence[float] | None = setting(
        None,
        help="Input normalisation mean, comma-separated (default: from the checkpoint's config).",
        check=Parsed(lambda value: _check_stats(value, "mean"), "numbers, one per channel"),
        cli=Cli(parse=lambda text, flag: parse_numbers(text, flag)),
    )
    std: Sequence[float] | None = setting(
        None,
        help="Input normalisation std, comma-separated.",
        check=Parsed(lambda value: _check_stats(value, "std"), "positive numbers, one per channel"),
        cli=Cli(parse=lambda text, flag: parse_numbers(text, flag)),
    )
    input_size: Sequence[int] | None = setting(
        None,
        help="The shape of one input: C,H,W for images (3,32,32), C,L for signals (1,40), F for "
        "vectors (64) (default: from the checkpoint or timm's config).",
        check=Parsed(lambda value: _check_input_size(value), "positive integers"),
        cli=Cli(parse=lambda text, flag: parse_shape(text, flag), show_default=False),
    )
    weights_only: bool = setting(
        False,
        help="Weight norms and parameter inventory only; no data, no attack.",
        check=IsBool(),
        cli=Cli(flags=("--weights-only",), shared=False),
    )

    def __post_init__(self) -> None:
        if self.arch is not None and (not isinstance(self.arch, str) or not self.arch.strip()):
            raise ConfigError("arch must be a timm model name or models.py:ClassName")
        apply_checks(self)
        if (self.mean is None) != (self.std is None):
            raise ConfigError("give both mean and std, or neither")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ConfigError(
                f"mean has {len(self.mean)} values but std has {len(self.std)}; "
                "give one per channel"
            )


def parse_numbers(text: str, name: str) -> list[float]:
    """``"0.485, 0.456,0.406"`` -> ``[0.485, 0.456, 0.406]``; ``name`` is what the error
    message calls the value (the command line passes its flag).

    Raises:
        ConfigError: an empty list or a part that is not a number.
    """
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(
            f"{name} must be comma-separated numbers like 0.5 or 0.485,0.456,0.406, got {text!r}"
        ) from None
    if not values:
        raise ConfigError(f"{name} is empty")
    return values


def parse_shape(text: str, name: str) -> tuple[int, ...]:
    """``"3,32,32"`` (or ``"3x32x32"``) -> ``(3, 32, 32)``; ``name`` as in :func:`parse_numbers`.

    Raises:
        ConfigError: a part that is not a positive integer.
    """
    parts = text.replace("x", ",").replace(" ", "").split(",")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if not size or min(size) < 1:
        raise ConfigError(
            f"{name} must be positive integers separated by commas: C,H,W like 3,32,32, "
            f"C,L like 1,40 or F like 64, got {text!r}"
        )
    return size


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


def config_from_settings(config: ScanConfig | None, settings: dict[str, Any]) -> ScanConfig:
    """The config of :func:`wciaudit.scan` or ``track``: ``config`` with the keyword
    ``settings`` on top, or a ScanConfig made of them (eps / norm None: unset).

    Raises:
        ConfigError: an unknown setting or an invalid value.
    """
    known = {f.name for f in fields(ScanConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    if config is None:
        return ScanConfig(**settings)
    return config.with_(**settings) if settings else config


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
    "DEFAULT_NORM",
    "config_from_settings",
    "parse_eps",
    "parse_numbers",
    "parse_shape",
    "parse_norm",
    "format_eps",
]
