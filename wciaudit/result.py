"""The audit result and its JSON form (SPEC: "The JSON result (schema_version 1)").

Other tools and CI read this file, so the SPEC keys are stable; extra keys are added
beside them, never in their place. A figure that could not be measured is ``None``
(JSON ``null``), never 0.

Example:
    >>> r = AuditResult.from_json(AuditResult().to_json())
    >>> r.schema_version
    1
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import ConfigError

SCHEMA_VERSION = 1
#: the stages of a scan, in the order they run (``AuditResult.stages`` lists those that
#: finished; a scan without data runs the first two)
STAGES = ("load", "data", "attack", "evaluate", "curvature", "bound")


@dataclass
class CheckpointInfo:
    path: str = ""
    sha256: str = ""
    format: str = ""
    arch: str = ""
    num_params: int = 0
    num_classes: int | None = None
    input_size: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class DatasetInfo:
    name: str = ""
    n_train: int | None = None
    n_test: int | None = None
    input_shape: list[int] | None = None
    num_classes: int | None = None
    source: str = ""
    reason: str = ""
    lo: float = 0.0
    hi: float = 1.0
    hessian_samples: int | None = None
    n_train_total: int | None = None
    n_test_total: int | None = None


@dataclass
class Metrics:
    clean_acc_train: float | None = None
    clean_acc_test: float | None = None
    clean_loss_train: float | None = None
    clean_loss_test: float | None = None
    robust_acc_train: float | None = None
    robust_acc_test: float | None = None
    robust_loss_train: float | None = None
    robust_loss_test: float | None = None
    gap_loss: float | None = None
    gap_err: float | None = None
    # standard errors from the sample sizes (binomial for accuracies, per-example
    # spread for losses; independent splits for the gaps)
    clean_acc_train_se: float | None = None
    clean_acc_test_se: float | None = None
    clean_loss_train_se: float | None = None
    clean_loss_test_se: float | None = None
    robust_acc_train_se: float | None = None
    robust_acc_test_se: float | None = None
    robust_loss_train_se: float | None = None
    robust_loss_test_se: float | None = None
    gap_loss_se: float | None = None
    gap_err_se: float | None = None
    hessian_loss: float | None = None


@dataclass
class LayerResult:
    name: str = ""
    shape: list[int] = field(default_factory=list)
    numel: int = 0
    frob_norm: float = 0.0
    trace: float | None = None
    trace_se: float | None = None
    # Rademacher probes averaged; 0 for an exact route (``method`` says which). Results
    # written before this was settled hold the string "exact" there: read as 0.
    probes: int = 0
    method: str = "hutchinson"
    converged: bool | None = None
    wci_term: float | None = None
    flag: str | None = None
    rel_se: float | None = None
    wci_term_se: float | None = None
    stop_reason: str | None = None
    # running estimate after each round of probes: [probes, mean, se]
    history: list[list[float]] = field(default_factory=list)
    route_reason: str | None = None
    # the parts of trace_se (added in quadrature) and the sources they cover
    probe_se: float | None = None
    sample_se: float | None = None
    attack_se: float | None = None
    se_covers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.probes == "exact":
            self.probes = 0

    @property
    def exact(self) -> bool:
        """True for a trace computed without probes (no estimator noise)."""
        return self.method.startswith("exact")


@dataclass
class OtherParameter:
    name: str = ""
    shape: list[int] = field(default_factory=list)
    numel: int = 0
    frob_norm: float = 0.0
    kind: str = ""


@dataclass
class PacBayes:
    c: float | None = None
    curvature_term: float | None = None
    kl_term: float | None = None
    confidence_term: float | None = None
    bound: float | None = None
    # the scan's delta (ScanConfig.delta), set by every scan; None in a bare record
    delta: float | None = None
    m: int | None = None
    l_adv: float | None = None
    note: str = (
        "Second-order PAC-Bayes approximation, not a certificate: the expansion keeps "
        "second-order terms only and c* is chosen after seeing the data."
    )
    # ln C: the cross-entropy of a uniform guess; a bound above it says nothing
    uniform_loss: float | None = None
    vacuous: bool | None = None


@dataclass
class AttackInfo:
    """Which attack produced which figure, and the gradient-masking checks."""

    accuracy_from: str = ""
    loss_from: str = ""
    hessian_points_from: str = ""
    # per split: how many examples each stage broke first ("clean": misclassified as is)
    broken_by: dict[str, dict[str, int]] = field(default_factory=dict)
    # robust accuracy under each attack that ran, side by side: {attack: {"train",
    # "train_se", "test", "test_se"}}; the chosen attack first, then the loss attack when
    # it is another one (AutoAttack's APGD-CE stage, or the PGD that gave the loss)
    robust_acc: dict[str, dict[str, float | None]] = field(default_factory=dict)
    masking: dict[str, Any] | None = None
    # stages of the chosen attack that could not run on the inputs' shape: {stage: reason}
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class Gate:
    passed: bool = True
    failures: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Timings:
    # seconds per stage; null in an incomplete result for a stage that did not finish
    load_s: float | None = 0.0
    attack_s: float | None = 0.0
    trace_s: float | None = 0.0
    total_s: float = 0.0
    eval_s: float | None = 0.0
    data_s: float | None = 0.0
    # when the scan started (UTC, ISO 8601); kept with the timings so that two runs
    # with the same seed differ in this block alone
    started_at: str = ""
    # seconds of the parts of the stages a default scan spends its time on (attack,
    # masking, traces, attack_spread, spread_remeasure; wciaudit.pipeline.stages.PARTS), and
    # each part's fraction of total_s, with "other" for the rest (load, data, evaluate)
    parts_s: dict[str, float] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)


@dataclass
class Environment:
    python: str = ""
    torch: str = ""
    timm: str = ""
    platform: str = ""
    device: str = ""
    device_name: str = ""
    dtype: str = ""


@dataclass
class AuditResult:
    """Everything one scan measured; ``to_json``/``from_json`` give the schema-v1 file."""

    schema_version: int = SCHEMA_VERSION
    tool_version: str = __version__
    checkpoint: CheckpointInfo = field(default_factory=CheckpointInfo)
    dataset: DatasetInfo = field(default_factory=DatasetInfo)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    layers: list[LayerResult] = field(default_factory=list)
    other_parameters: list[OtherParameter] = field(default_factory=list)
    wci: float | None = None
    wci_se: float | None = None
    wci_se_method: str = "delta method from per-layer standard errors (independent probes)"
    # per figure, the sources of variation its SE covers (SPEC: What an SE covers)
    se_covers: dict[str, list[str]] = field(default_factory=dict)
    # the parts of wci_se (in quadrature) by source
    wci_se_parts: dict[str, float] = field(default_factory=dict)
    # what the WCI precision target (--tol) did: {"tol", "met", "relative_se", "reason"};
    # None when no WCI was measured
    wci_target: dict[str, Any] | None = None
    attacks: AttackInfo = field(default_factory=AttackInfo)
    pac_bayes: PacBayes = field(default_factory=PacBayes)
    gate: Gate = field(default_factory=Gate)
    timings: Timings = field(default_factory=Timings)
    environment: Environment = field(default_factory=Environment)
    notes: list[str] = field(default_factory=list)
    # the stages that finished, in order (:data:`STAGES`); a result written when a scan
    # was stopped (SIGTERM, Ctrl-C) after its attack stage has ``complete`` False and
    # ``stopped_at`` the stage that did not finish: that stage's figures and those of
    # the stages after it are null
    complete: bool = True
    stopped_at: str | None = None
    stages: list[str] = field(default_factory=list)

    @property
    def incomplete_reason(self) -> str | None:
        """One sentence on what an incomplete result lacks; None for a complete one."""
        if self.complete:
            return None
        done = ", ".join(self.stages) or "none"
        return (
            f"incomplete result: the scan was stopped during its {self.stopped_at or '?'} "
            f"stage (finished: {done}); the figures of that stage and later ones are null"
        )

    # -- derived figures used by the report and the gate -------------------------------
    @property
    def sum_frob_sq(self) -> float:
        """Ablation: sum_k ||W_k||_F^2."""
        return float(sum(layer.frob_norm**2 for layer in self.layers))

    @property
    def wci_layers(self) -> dict[str, int] | None:
        """How many layers WCI counts (SPEC: Weight-Curvature Index): ``total`` layers with
        a measured trace, ``nonpositive`` of them with Tr(H) <= 0 (they add 0), ``counted``
        the rest; None when no trace was measured (weights only, a stopped scan)."""
        # a trace that is not finite was not measured (the JSON writes it as null)
        traces = [
            t for t in (layer.trace for layer in self.layers) if t is not None and math.isfinite(t)
        ]
        if not traces:
            return None
        nonpositive = sum(1 for t in traces if t <= 0)
        return {
            "counted": len(traces) - nonpositive,
            "total": len(traces),
            "nonpositive": nonpositive,
        }

    @property
    def sum_trace(self) -> float | None:
        """Ablation: sum_k Tr(H_k), None when any trace is missing."""
        traces = [layer.trace for layer in self.layers]
        if not traces or any(t is None for t in traces):
            return None
        return float(sum(traces))

    # -- JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {}
        for key, value in json_safe(asdict(self)).items():
            d[key] = value
            if key == "wci_se":  # derived from the layers (and read back from them)
                d["wci_layers"] = self.wci_layers
        for layer in d["layers"]:  # one type per key: a count, 0 for an exact route
            if layer.get("probes") == "exact":
                layer["probes"] = 0
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AuditResult:
        if not isinstance(d, dict):
            raise ConfigError("a wciaudit result must be a JSON object")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ConfigError(
                f"unsupported result schema_version {version!r}; this wciaudit reads "
                f"version {SCHEMA_VERSION}"
            )
        try:
            return cls(
                schema_version=version,
                tool_version=str(d.get("tool_version", "")),
                checkpoint=_build(CheckpointInfo, d.get("checkpoint")),
                dataset=_build(DatasetInfo, d.get("dataset")),
                config=dict(d.get("config") or {}),
                metrics=_build(Metrics, d.get("metrics")),
                layers=[_build(LayerResult, x) for x in d.get("layers") or []],
                other_parameters=[
                    _build(OtherParameter, x) for x in d.get("other_parameters") or []
                ],
                wci=d.get("wci"),
                wci_se=d.get("wci_se"),
                wci_se_method=str(d.get("wci_se_method", "")),
                se_covers={str(k): list(v) for k, v in (d.get("se_covers") or {}).items()},
                wci_se_parts={str(k): float(v) for k, v in (d.get("wci_se_parts") or {}).items()},
                wci_target=dict(d["wci_target"]) if isinstance(d.get("wci_target"), dict) else None,
                attacks=_build(AttackInfo, d.get("attacks")),
                pac_bayes=_build(PacBayes, d.get("pac_bayes")),
                gate=_build(Gate, d.get("gate")),
                timings=_build(Timings, d.get("timings")),
                environment=_build(Environment, d.get("environment")),
                notes=list(d.get("notes") or []),
                complete=_flag(d.get("complete", True), "complete"),
                stopped_at=None if d.get("stopped_at") is None else str(d["stopped_at"]),
                stages=[str(x) for x in d.get("stages") or []],
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"malformed wciaudit result: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> AuditResult:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not a JSON file: {exc.msg} at line {exc.lineno}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AuditResult:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"result file not found: {p}")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read result file {p}: {exc}") from None
        try:
            return cls.from_json(text)
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON atomically (temp file in the same folder, then rename)."""
        return write_atomic(path, self.to_json())


def write_atomic(path: str | os.PathLike[str], text: str | bytes) -> Path:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename.

    A failure leaves no file behind and an existing file untouched. The file gets the
    mode an ordinary ``open(path, "w")`` would give it: an existing file keeps its mode,
    a new one gets ``0o666 & ~umask`` (``mkstemp`` alone would make every output 0600,
    unreadable to the colleague or web server it is written for).
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"output folder does not exist: {folder}")
    data = text.encode("utf-8") if isinstance(text, str) else text
    mode = _output_mode(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def _output_mode(target: Path) -> int:
    """Permission bits for ``target``: the existing file's, else ``0o666 & ~umask``."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where the system allows.

    Linux reports it in /proc/self/status; elsewhere the only way is to set and restore
    it, which another thread could observe for an instant, so that is the fallback.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{key} must be true or false")
    return value


def _build(cls: type, d: Any) -> Any:
    if d is None:
        return cls()
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__} must be an object")
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def json_safe(obj: Any) -> Any:
    """Non-finite floats become None (JSON null): a figure we could not measure."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
