"""wciaudit: audit image classifiers for adversarially robust generalization.

The public API; the command line is a thin layer over it.

Example:
    >>> import wciaudit
    >>> result = wciaudit.scan("sample_models/digits_resnet_pgd.safetensors", "sample", eps="0.1")  # doctest: +SKIP
    >>> print(result.wci, result.wci_se, result.metrics.gap_loss)  # doctest: +SKIP
"""

from ._version import __version__
from .checkpoints import LoadedCheckpoint, load_checkpoint
from .config import ScanConfig, parse_eps
from .data import Splits, load_data
from .errors import CheckpointError, ConfigError, DataError, WCIAuditError
from .monitor import WCIMonitor
from .result import AuditResult
from .scan import scan

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
