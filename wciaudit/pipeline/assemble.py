"""The scan's result, assembled once from the values its stages returned.

:class:`ScanState` holds what the stages have returned so far (a stage that has not run
is None). :func:`assemble` turns it into an :class:`~wciaudit.result.AuditResult`: at
the end of a scan, and after each stage for the incomplete copy a stopped scan writes
(:mod:`wciaudit.pipeline.stages`), so both are built the same way.
"""

from __future__ import annotations

import copy
import importlib.metadata
import platform
from dataclasses import dataclass, fields, replace

import torch

from ..checkpoints import LoadedCheckpoint
from ..result import AuditResult, CheckpointInfo, Environment, Metrics, PacBayes
from ..threads import api_thread_policy
from .attack import AttackStage
from .bound import Bound
from .load import DataChoice, Inventory
from .measure import Curvature
from .run import ScanRun

__all__ = ["NO_LAYERS", "ScanState", "assemble"]

#: the note of a model without WCI layers
NO_LAYERS = "the model has no parameter named *.weight with dim >= 2: no WCI layers"


@dataclass
class ScanState:
    """The values of the stages so far: load (``loaded``, ``threat_sources``,
    ``inventory``), data (``data``), attack, evaluate (``metrics``), curvature, bound."""

    loaded: LoadedCheckpoint
    threat_sources: dict[str, str]
    inventory: Inventory
    data: DataChoice | None = None
    attack: AttackStage | None = None
    metrics: Metrics | None = None
    curvature: Curvature | None = None
    bound: Bound | None = None


def assemble(state: ScanState, run: ScanRun) -> AuditResult:
    """The result of the stages that returned so far (the others' figures null); the
    notes are those written so far, then the flagged layers'."""
    loaded, config = state.loaded, run.config
    info = CheckpointInfo(**{f.name: getattr(loaded.info, f.name) for f in fields(CheckpointInfo)})
    result = AuditResult(
        checkpoint=info,
        config=config.to_dict(),
        environment=_environment(run.device, config.dtype),
        notes=list(run.notes),
    )
    result.config["device"] = str(run.device)
    result.config["thread_policy"] = api_thread_policy(config.threads)
    result.config["processes"] = run.shard.world
    result.config["threat_model_source"] = dict(state.threat_sources)
    result.config["preprocessing_source"] = dict(loaded.sources)
    result.other_parameters = copy.deepcopy(state.inventory.other)
    measured = state.curvature is not None and state.curvature.layers
    result.layers = copy.deepcopy(state.curvature.layers if measured else state.inventory.layers)
    if state.data is not None:
        result.dataset = copy.deepcopy(state.data.dataset)
    if state.attack is not None:
        result.attacks = copy.deepcopy(state.attack.info)
    if state.metrics is not None:
        result.metrics = replace(state.metrics)
    if state.curvature is not None:
        _curvature(result, state.curvature)
    result.pac_bayes = PacBayes(delta=config.delta)  # the bound stage's terms, if it ran
    if state.bound is not None:
        _bound(result, state.bound)
    flagged = [la.name for la in result.layers if la.flag]
    if flagged:
        result.notes.append(
            f"{len(flagged)} layer(s) flagged (a trace at or below 0 or within 2 SE of it, "
            "or not converged; each layer's flag says which): " + ", ".join(flagged[:5])
        )
    result.config["batch_size_used"] = run.batches.size
    return result


def _curvature(result: AuditResult, curvature: Curvature) -> None:
    result.dataset.hessian_samples = curvature.subset.n
    result.metrics.hessian_loss = curvature.hessian_loss


def _bound(result: AuditResult, bound: Bound) -> None:
    figures = bound.wci
    result.wci, result.wci_se, result.wci_se_method = figures.wci, figures.se, figures.method
    result.se_covers["wci"] = list(figures.covers)
    result.wci_se_parts = dict(figures.parts)
    result.wci_target = dict(bound.target)
    result.pac_bayes = replace(bound.pac_bayes)


def _environment(device: torch.device, dtype: str) -> Environment:
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )
    return Environment(
        python=platform.python_version(),
        torch=torch.__version__,
        timm=_version_of("timm"),
        platform=platform.platform(terse=True),
        device=str(device),
        device_name=name,
        dtype=dtype,
    )


def _version_of(package: str) -> str:
    """An installed package's version without importing it (importing timm takes ~2 s)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""
