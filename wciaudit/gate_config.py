"""Gate thresholds from the command line and config files (``[tool.wciaudit]`` in
``pyproject.toml`` or a ``wciaudit.toml``), and the baseline a WCI increase is measured
against. :mod:`wciaudit.gate` applies them to a result.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .result import AuditResult

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

DEFAULT_SIGMAS = 2.0

#: config files looked for in each folder, first match wins
CONFIG_FILES = ("wciaudit.toml", "pyproject.toml")

#: threshold keys: (figure in the result, op, command-line option)
THRESHOLDS: dict[str, tuple[str, str, str]] = {
    "max_wci": ("wci", "<=", "--max-wci"),
    "max_gap_loss": ("gap_loss", "<=", "--max-gap-loss"),
    "max_gap_err": ("gap_err", "<=", "--max-gap-err"),
    "min_robust_acc": ("robust_acc_test", ">=", "--min-robust-acc"),
    "max_bound": ("bound", "<=", "--max-bound"),
}
#: every key a config file may hold
CONFIG_KEYS = (*THRESHOLDS, "max_wci_increase", "fail_on_masking", "gate_sigmas", "baseline")


_INCREASE = re.compile(r"^\s*([+]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class Increase:
    """An allowed increase over the baseline: relative (``"10%"`` -> 0.10) or absolute."""

    amount: float
    relative: bool

    def limit(self, base: float) -> float:
        return base * (1.0 + self.amount) if self.relative else base + self.amount

    def __str__(self) -> str:
        return f"{self.amount * 100:g}%" if self.relative else f"{self.amount:g}"


@dataclass(frozen=True)
class GateConfig:
    """Effective gate settings, and where each came from.

    Attributes:
        max_wci, max_gap_loss, max_gap_err, max_bound: upper limits (None: no gate).
        min_robust_acc: lower limit on ``metrics.robust_acc_test``, a fraction in [0, 1].
        max_wci_increase: allowed WCI increase over the baseline result.
        fail_on_masking: fail when a gradient-masking check of the result failed (the
            random-output check among them); None or False: no such gate.
        gate_sigmas: how many SEs beyond a threshold a figure must be to fail.
        baseline: path of the baseline result (config-file paths are resolved against
            the file's folder).
        sources: key -> ``"cli"`` or the config file's path; keys not set are absent.
    """

    max_wci: float | None = None
    max_gap_loss: float | None = None
    max_gap_err: float | None = None
    min_robust_acc: float | None = None
    max_bound: float | None = None
    max_wci_increase: Increase | None = None
    fail_on_masking: bool | None = None
    gate_sigmas: float = DEFAULT_SIGMAS
    baseline: Path | None = None
    sources: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def has_gates(self) -> bool:
        """True when at least one threshold (or the masking gate) is set."""
        return (
            self.max_wci_increase is not None
            or bool(self.fail_on_masking)
            or any(getattr(self, key) is not None for key in THRESHOLDS)
        )

    def source(self, key: str) -> str:
        return self.sources.get(key, "default")

    def updated(self, values: Mapping[str, Any], source: str) -> GateConfig:
        """A copy with ``values`` (unvalidated: from a file or the command line) on top.

        ``None`` values are skipped, so unset command-line flags leave the file's values.

        Raises:
            ConfigError: naming ``source`` and the key, for an unknown key or a bad value.
        """
        where = "" if source == "cli" else f"{source}: "
        table = "[tool.wciaudit] " if Path(source).name == "pyproject.toml" else ""
        changes: dict[str, Any] = {}
        sources = dict(self.sources)
        for key, raw in values.items():
            if raw is None:
                continue
            label = _option(key) if source == "cli" else f"{table}key '{key}'"
            if key not in CONFIG_KEYS:
                raise ConfigError(
                    f"{where}unknown {table}key '{key}'; allowed keys: {', '.join(CONFIG_KEYS)}"
                )
            if key == "max_wci_increase":
                changes[key] = parse_increase(raw, f"{where}{label}")
            elif key == "baseline":
                if not isinstance(raw, (str, Path)) or not str(raw).strip():
                    raise ConfigError(f"{where}{label} must be a path (a string), got {raw!r}")
                path = Path(raw)
                if source != "cli" and not path.is_absolute():
                    path = Path(source).parent / path
                changes[key] = path
            elif key == "fail_on_masking":
                if not isinstance(raw, bool):
                    raise ConfigError(f"{where}{label} must be true or false, got {raw!r}")
                changes[key] = raw
            else:
                value = _number(raw, f"{where}{label}")
                if key == "gate_sigmas" and value < 0:
                    raise ConfigError(f"{where}{label} must be >= 0, got {raw!r}")
                if key == "min_robust_acc" and not 0.0 <= value <= 1.0:
                    raise ConfigError(
                        f"{where}{label} is a fraction of the test split in [0, 1], got {raw!r}"
                    )
                changes[key] = value
            sources[key] = source
        return replace(self, **changes, sources=sources)

    def to_dict(self) -> dict[str, Any]:
        """The effective thresholds with their sources, for the JSON ``gate`` block."""
        out: dict[str, Any] = {}
        for key in CONFIG_KEYS:
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, (Increase, Path)):
                value = str(value)
            out[key] = {"value": value, "source": self.source(key)}
        return out


def parse_increase(value: Any, where: str = "max_wci_increase") -> Increase:
    """Parse ``"10%"`` (relative, 0.10) or ``0.5`` / ``"0.5"`` (absolute, WCI units).

    Raises:
        ConfigError: for anything else, or a negative or non-finite amount.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{where} must be a percentage like '10%' or a number, got {value!r}")
    if isinstance(value, (int, float)):
        amount, relative = float(value), False
    else:
        match = _INCREASE.match(str(value)) if isinstance(value, str) else None
        if not match:
            raise ConfigError(
                f"{where} must be a percentage like '10%' or a number like 0.5, got {value!r}"
            )
        amount, relative = float(match.group(1)), bool(match.group(2))
        if relative:
            amount /= 100.0
    if not math.isfinite(amount) or amount < 0:
        raise ConfigError(f"{where} must be a finite amount >= 0, got {value!r}")
    return Increase(amount, relative)


def find_config_file(start_dir: str | Path) -> Path | None:
    """The first ``wciaudit.toml``, or ``pyproject.toml`` with a ``[tool.wciaudit]`` table,
    in ``start_dir`` or a folder above it. In one folder ``wciaudit.toml`` wins."""
    folder = Path(start_dir).resolve()
    for candidate in (folder, *folder.parents):
        for name in CONFIG_FILES:
            path = candidate / name
            if not path.is_file():
                continue
            if name == "wciaudit.toml" or _has_tool_table(path):
                return path
    return None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw gate settings of one config file (``[tool.wciaudit]`` of a
    ``pyproject.toml``, the top level of any other file); ``{}`` when absent.

    Raises:
        ConfigError: naming the file for unreadable or invalid TOML.
    """
    p = Path(path)
    data = _read_toml(p)
    if p.name != "pyproject.toml":
        return _underscored(data, p)
    table = data.get("tool", {})
    table = table.get("wciaudit", {}) if isinstance(table, dict) else {}
    if not isinstance(table, dict):
        raise ConfigError(f"{p}: [tool.wciaudit] must be a table")
    return _underscored(table, p)


def _underscored(table: dict[str, Any], path: Path) -> dict[str, Any]:
    """Keys in either spelling, the flag's (``max-wci``) or Python's (``max_wci``), as
    Python's; both spellings of one key in one file is an error."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_") if isinstance(key, str) else key
        if name in out:
            raise ConfigError(
                f"{path}: key '{name}' is given twice (as '{name}' and '{name.replace('_', '-')}')"
            )
        out[name] = value
    return out


def load_gate_config(
    start_dir: str | Path | None = None, *, path: str | Path | None = None
) -> tuple[GateConfig, Path | None]:
    """Gate settings from ``path``, or from the config file found from ``start_dir``
    (default: the current folder) upward; ``(GateConfig(), None)`` when there is none.

    Raises:
        ConfigError: naming the file and the key, for invalid TOML, an unknown key or a
            value of the wrong type.
    """
    if path is not None:
        source: Path | None = Path(path)
        if not source.is_file():
            raise ConfigError(f"config file not found: {source}")
    else:
        source = find_config_file(Path.cwd() if start_dir is None else start_dir)
    if source is None:
        return GateConfig(), None
    return GateConfig().updated(read_config_file(source), str(source)), source


def load_baseline(config: GateConfig) -> AuditResult | None:
    """The baseline result ``config.baseline`` names, or None.

    Raises:
        ConfigError: when the file cannot be read, or when ``max_wci_increase`` is set
            without a baseline.
    """
    if config.baseline is None:
        if config.max_wci_increase is not None:
            raise ConfigError(
                f"max_wci_increase (from {config.source('max_wci_increase')}) needs a "
                "baseline result: --baseline old.json, or 'baseline' in the config file"
            )
        return None
    try:
        return AuditResult.load(config.baseline)
    except ConfigError as exc:
        raise ConfigError(f"baseline (from {config.source('baseline')}): {exc}") from None


def _number(raw: Any, label: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ConfigError(f"{label} must be a number, got {raw!r} ({type(raw).__name__})")
    value = float(raw)
    if not math.isfinite(value):
        raise ConfigError(f"{label} must be a finite number, got {raw!r}")
    return value


def _option(key: str) -> str:
    return "--" + key.replace("_", "-")


def _read_toml(path: Path) -> dict[str, Any]:
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise ConfigError(f"{path}: reading TOML needs Python >= 3.11 or the 'tomli' package")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _has_tool_table(path: Path) -> bool:
    """Whether a pyproject.toml has [tool.wciaudit]; an invalid one is reported, not skipped."""
    tool = _read_toml(path).get("tool")
    return isinstance(tool, dict) and "wciaudit" in tool
