"""wciaudit: audit image classifiers for adversarially robust generalization.

The public API; the command line is a thin layer over it.

Example:
    >>> import wciaudit
    >>> result = wciaudit.scan("sample_models/digits_resnet_pgd.safetensors", "sample", eps="0.1")  # doctest: +SKIP
    >>> print(result.wci, result.wci_se, result.metrics.gap_loss)  # doctest: +SKIP

The names that need torch are imported on first use (PEP 562), so that a command that
never loads a model (``wciaudit gate``, ``wciaudit report``, ``--help``) starts without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_getattr
from ._version import __version__
from .errors import CheckpointError, ConfigError, DataError, WCIAuditError

if TYPE_CHECKING:
    from .checkpoints import LoadedCheckpoint, load_checkpoint
    from .config import ScanConfig, parse_eps
    from .data import Splits, load_data
    from .monitor import WCIMonitor
    from .pipeline import scan
    from .result import AuditResult

__all__ = [
    "__version__",
    "scan",
    "ScanConfig",
    "parse_eps",
    "AuditResult",
    "load_checkpoint",
    "LoadedCheckpoint",
    "load_data",
    "Splits",
    "WCIAuditError",
    "CheckpointError",
    "DataError",
    "ConfigError",
    "WCIMonitor",
]

#: public name -> the module that defines it, imported when the name is first read
_LAZY = {
    "scan": ".pipeline",
    "ScanConfig": ".config",
    "parse_eps": ".config",
    "AuditResult": ".result",
    "load_checkpoint": ".checkpoints",
    "LoadedCheckpoint": ".checkpoints",
    "load_data": ".data",
    "Splits": ".data",
    "WCIMonitor": ".monitor",
}

__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
