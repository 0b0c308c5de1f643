"""One audit, start to end: load -> data -> attack -> evaluate -> curvature -> bound.

:func:`scan` is the public entry point (``wciaudit.scan``); the command line is a thin
layer over it. Each stage is a function of what the stages before it returned, and
returns a value (:mod:`.load`, :mod:`.attack`, :mod:`.evaluate`, :mod:`.measure`,
:mod:`.bound`); :func:`.assemble.assemble` builds the result from those values once, at
the end, or after a stage for the copy a stopped scan writes (:mod:`.stages`). What
every stage reads (settings, device, shard, batch size, notes) is one
:class:`.run.ScanRun`.

Example:
    >>> from wciaudit import scan
    >>> result = scan("sample_models/digits_resnet_pgd.safetensors", "sample", eps="0.1")  # doctest: +SKIP
    >>> result.wci, result.metrics.gap_loss  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoints import LoadedCheckpoint
from ..config import LoadOptions, ScanConfig, config_from_settings
from ..data import Splits
from ..data_choice import check_model_accepts
from ..distributed import Shard
from ..model import AuditedModel, deterministic_kernels, eval_mode, no_tf32
from ..result import AuditResult
from ..threads import torch_threads
from .assemble import NO_LAYERS, ScanState, assemble
from .attack import attack_stage
from .bound import bound_stage
from .evaluate import robust_figures
from .load import choose, inventory, load, load_options, resolve_threat_model
from .measure import hessian_subset, measure_curvature
from .run import ProgressCallback, ScanRun
from .stages import StageCallback, Stages

__all__ = ["ProgressCallback", "StageCallback", "checkpoint_stem", "scan"]


def scan(
    checkpoint: str | os.PathLike[str] | LoadedCheckpoint | nn.Module,
    data: str | os.PathLike[str] | Splits | None = None,
    *,
    config: ScanConfig | None = None,
    options: LoadOptions | None = None,
    arch: str | None = None,
    arch_args: dict[str, Any] | str | None = None,
    num_classes: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    input_size: tuple[int, ...] | None = None,
    weights_only: bool = False,
    progress: ProgressCallback | None = None,
    on_stage: StageCallback | None = None,
    shard: Shard | None = None,
    **settings: Any,
) -> AuditResult:
    """Audit a classifier: robust figures, per-layer norms and traces, WCI, PAC-Bayes terms.

    Args:
        checkpoint: a checkpoint path (``.safetensors``, timm folder, ``.pt``), a
            :class:`LoadedCheckpoint`, or an ``nn.Module`` (audited on a copy).
        data: a data spec (``"sample"``, ``"file.npz"``, ImageFolder ``DIR``,
            ``"cifar10:DIR"``), a :class:`Splits`, or ``None`` to use the dataset the
            checkpoint names or the shipped sample (SPEC: the bare command).
        config: all settings (:class:`ScanConfig`); or pass them as keyword
            ``settings`` (``eps="8/255"``...), on top of ``config`` if both are given.
            ``eps`` / ``norm`` left None come from the checkpoint's metadata (keys
            ``eps``, ``norm``), else the default (8/255, linf);
            ``config["threat_model_source"]`` says which. ``threads`` (None by
            default) sets torch's CPU threads for the scan and puts the old value back;
            left None, torch's setting is used as found (the command line's policy is
            :mod:`wciaudit.threads`).
        options: the checkpoint-loading options as one :class:`LoadOptions`; or the
            keywords ``arch, arch_args, num_classes, mean, std, input_size,
            weights_only`` (not both).
        progress: optional callback ``progress(stage, advance, total)``.
        on_stage: optional callback ``on_stage(stage, partial)`` after each stage but
            the last, ``partial`` the result as it would stand if the scan stopped then
            (``complete`` False, see :mod:`wciaudit.pipeline.stages`): keep the latest
            to save what finished when the scan is interrupted.
        shard: this process's place under torchrun (see :mod:`wciaudit.distributed`);
            default: a single process.

    Returns:
        The :class:`AuditResult` (gate block untouched: see :mod:`wciaudit.gate`).

    Raises:
        CheckpointError, DataError, ConfigError: with a one-line message.
    """
    config = config_from_settings(config, settings)
    keywords = {
        "arch": arch,
        "arch_args": arch_args,
        "num_classes": num_classes,
        "mean": mean,
        "std": std,
        "input_size": input_size,
        "weights_only": weights_only,
    }
    options = load_options(options, keywords)
    with torch_threads(config.threads):
        return _run_stages(checkpoint, data, config, options, progress, on_stage, shard)


def _run_stages(
    checkpoint: Any,
    data: Any,
    config: ScanConfig,
    options: LoadOptions,
    progress: ProgressCallback | None,
    on_stage: StageCallback | None,
    shard: Shard | None,
) -> AuditResult:
    """The stages in order, each on what the ones before it returned."""
    stages = Stages(on_stage)
    with stages.stage("load"):
        loaded = load(checkpoint, options)
    config, threat_sources = resolve_threat_model(config, loaded)
    run = ScanRun.create(config, shard or Shard(), progress)
    run.part = stages.part
    run.notes.extend(loaded.notes)
    state = ScanState(loaded, threat_sources, inventory(loaded.model))
    with stages.stage("data"):
        state.data = choose(data, loaded, options, run)
        if not state.inventory.layers:
            run.notes.append(NO_LAYERS)
        if state.data.splits is None:
            run.notes.append("no data: every data-dependent figure is null")
            stages.plan = stages.plan[:2]
        stages.build = lambda: assemble(state, run)
    if state.data.splits is not None:
        _measure(run, state, stages)
        splits = state.data.splits
        with stages.stage("bound"):
            state.bound = bound_stage(
                state.curvature,
                state.metrics,
                config=config,
                n_train=None if splits.x_train is None else int(splits.x_train.shape[0]),
                classes=loaded.info.num_classes or splits.num_classes,
                notes=run.notes,
            )
    result = assemble(state, run)
    result.stages = list(stages.done)
    result.timings = stages.timings()
    return result


def _measure(run: ScanRun, state: ScanState, stages: Stages) -> None:
    """attack -> robust figures -> Hessian subset -> curvature, each stage's value into
    ``state``."""
    loaded, splits = state.loaded, state.data.splits
    net = AuditedModel(loaded.model, loaded.info.mean, loaded.info.std)
    net = net.to(device=run.device, dtype=run.dtype)
    with eval_mode(net), no_tf32(), deterministic_kernels(run.device) as unrepeatable:
        class_note = check_model_accepts(net, splits, run.device, run.dtype)
        if class_note:
            run.notes.append(class_note)
        with stages.stage("attack"):
            state.attack = attack_stage(run, net, splits)
        with stages.stage("evaluate"):
            state.metrics = robust_figures(run, net, splits, state.attack)
        with stages.stage("curvature"):
            subset = hessian_subset(run, splits, state.attack.points)
            state.curvature = measure_curvature(
                run, net, subset, state.attack.loss_attack, state.inventory.layers
            )
    if unrepeatable:  # ops without a deterministic CUDA kernel, filled when the block ends
        run.notes.append("not bit-for-bit repeatable on this device: " + "; ".join(unrepeatable))


def checkpoint_stem(path: str | os.PathLike[str]) -> str:
    """File name stem for outputs: ``model.safetensors`` -> ``model``; a folder -> its name."""
    p = Path(path)
    return p.name if p.is_dir() else p.stem
