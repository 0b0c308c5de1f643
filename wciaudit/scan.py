"""One audit, start to end: load -> data -> attack -> figures -> curvature -> bound.

:func:`scan` is the public entry point; the command line is a thin layer over it. Each
stage is a function of what the stages before it produced; a small :class:`_Run` carries
the settings every stage shares (config, device, dtype, shard, batch size, notes).

Example:
    >>> from wciaudit import scan
    >>> result = scan("sample_models/digits_resnet_pgd.safetensors", "sample", eps="0.1")  # doctest: +SKIP
    >>> result.wci, result.metrics.gap_loss  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import bounds
from .attacks import AttackOutcome, MaskingReport, masking_checks, run_attack
from .attacks.autoattack import broken_counts
from .attacks.masking import stochastic_output_check
from .checkpoints import LoadedCheckpoint, load_checkpoint, loaded_from_module, resolve
from .config import (
    DEFAULT_EPS,
    LoadOptions,
    Norm,
    ScanConfig,
    config_from_settings,
    parse_eps,
    parse_norm,
)
from .data import Splits
from .data_choice import check_model_accepts, choose_data
from .distributed import Shard
from .errors import CheckpointError, ConfigError
from .metrics import accuracy, per_example, robust_gap, split_figures
from .model import (
    AuditedModel,
    deterministic_kernels,
    eval_mode,
    no_tf32,
    other_parameters,
    resolve_device,
    weight_layers,
)
from .result import (
    AttackInfo,
    AuditResult,
    CheckpointInfo,
    DatasetInfo,
    Environment,
    LayerResult,
    Metrics,
    OtherParameter,
    PacBayes,
)
from .retry import run_with_batch_retry
from .scan_curvature import measure_curvature
from .scan_stages import StageCallback, Stages
from .threads import api_thread_policy, torch_threads

#: progress(stage, advance, total): stage is "attack-train", "attack-test" or "curvature";
#: total is None where it is not known in advance (Hutchinson probes).
ProgressCallback = Callable[[str, int, "int | None"], None]


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
        config: all settings; or pass them as keyword ``settings`` (``eps="8/255"``...).
            The threat model is "unset" when ``eps`` / ``norm`` is passed as ``None``,
            or when neither ``config`` nor a keyword gives it: it then comes from the
            checkpoint's metadata (keys ``eps``, ``norm``), else the default (8/255,
            linf); ``config["threat_model_source"]`` says which. ``threads`` (None by
            default) sets torch's CPU threads for the scan and puts the old value back;
            left None, torch's setting is used as found (the command line's policy is
            :mod:`wciaudit.threads`).
        options: the checkpoint-loading options as one :class:`LoadOptions`; or the
            keywords ``arch, arch_args, num_classes, mean, std, input_size,
            weights_only`` (not both).
        progress: optional callback ``progress(stage, advance, total)``.
        on_stage: optional callback ``on_stage(stage, partial)`` after each stage but
            the last, ``partial`` being a copy of the result as it would stand if the
            scan stopped then (``complete`` False, see :mod:`wciaudit.scan_stages`):
            keep the latest to save what finished when the scan is interrupted.
        shard: this process's place under torchrun (see :mod:`wciaudit.distributed`);
            default: a single process.

    Returns:
        The :class:`AuditResult` (gate block untouched: see :mod:`wciaudit.gate`).

    Raises:
        CheckpointError, DataError, ConfigError: with a one-line message.
    """
    cfg = config_from_settings(config, settings)
    options = _load_options(
        options, arch, arch_args, num_classes, mean, std, input_size, weights_only
    )
    with torch_threads(cfg.threads):
        return _scan(checkpoint, data, cfg, options, progress, on_stage, shard)


def _scan(
    checkpoint: Any,
    data: Any,
    cfg: ScanConfig,
    options: LoadOptions,
    progress: ProgressCallback | None,
    on_stage: StageCallback | None,
    shard: Shard | None,
) -> AuditResult:
    """:func:`scan` with its settings parsed, on the threads ``cfg.threads`` asks for."""
    stages = Stages(on_stage)
    with stages.stage("load"):
        loaded = _load(checkpoint, options)
    cfg, threat_sources = _threat_model(cfg, loaded)
    run = _Run.create(cfg, shard or Shard(), progress)
    run.part = stages.part
    run.notes.extend(loaded.notes)
    stages.finish = partial(_finish, run=run)
    with stages.stage("data"):
        splits, result = _data(data, loaded, options, run, threat_sources, stages)
    if splits is not None:
        _measure(run, loaded, splits, result, stages)
        with stages.stage("bound"):
            _bound(result, cfg, splits)
    _finish(result, run)
    result.stages = list(stages.done)
    result.timings = stages.timings()
    return result


# -- the stages ---------------------------------------------------------------------------
@dataclass
class _Run:
    """What every stage of one scan shares: settings, where it runs, the notes it writes."""

    cfg: ScanConfig
    device: torch.device
    dtype: torch.dtype
    shard: Shard
    batches: _BatchSize
    notes: list[str]
    progress: ProgressCallback | None
    #: times a part of a stage (``Stages.part``): ``with run.part("traces"): ...``
    part: Callable[[str], AbstractContextManager[None]] = lambda _name: nullcontext()

    @classmethod
    def create(cls, cfg: ScanConfig, shard: Shard, progress: ProgressCallback | None) -> _Run:
        on_gpu = shard.active and shard.device.type == "cuda"
        device = shard.device if on_gpu else resolve_device(cfg.device)
        dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        notes: list[str] = []
        return cls(cfg, device, dtype, shard, _BatchSize(cfg.batch_size, notes), notes, progress)

    def ticker(self, stage: str, total: int | None) -> Callable[..., None] | None:
        """``progress(stage, k, total)`` as the one- or two-argument callback a stage takes."""
        if self.progress is None:
            return None
        report = self.progress

        def tick(*args: Any) -> None:
            report(stage, args[-1], total)

        return tick


def _measure(
    run: _Run,
    loaded: LoadedCheckpoint,
    splits: Splits,
    result: AuditResult,
    stages: Stages,
) -> None:
    """attack -> robust figures -> Hessian subset -> curvature, filling ``result``."""
    net = AuditedModel(loaded.model, loaded.info.mean, loaded.info.std)
    net = net.to(device=run.device, dtype=run.dtype)
    with eval_mode(net), no_tf32(), deterministic_kernels(run.device) as unrepeatable:
        class_note = check_model_accepts(net, splits, run.device, run.dtype)
        if class_note:
            run.notes.append(class_note)
        with stages.stage("attack"):
            with run.part("attack"):
                outcomes = _attack(run, net, splits)
            result.attacks = _attack_info(run, outcomes)
            with run.part("masking"):
                result.attacks.masking = _masking(run, net, splits)
        with stages.stage("evaluate"):
            result.metrics = _robust_figures(run, net, splits, outcomes)
        adv = {split: outcome.x_loss for split, outcome in outcomes.items()}
        with stages.stage("curvature"):
            loss_attack = next(iter(outcomes.values())).loss_attack
            measure_curvature(run, net, splits, adv, result, loss_attack)
    if unrepeatable:  # ops without a deterministic CUDA kernel, filled when the block ends
        run.notes.append("not bit-for-bit repeatable on this device: " + "; ".join(unrepeatable))


def _attack_shard(
    batch_size: int,
    *,
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    run: _Run,
    stream: int,
    offset: int,
    progress: Callable[..., None] | None,
) -> AttackOutcome:
    cfg = run.cfg.with_(batch_size=batch_size)
    return run_attack(
        net, x, y, cfg, run.device, stream=stream, index_offset=offset, progress=progress
    )


def _attack(run: _Run, net: nn.Module, splits: Splits) -> dict[str, AttackOutcome]:
    """The attacks on this process's shard of each split; starts are seeded by the
    global example index, so they do not depend on the shard or the batch size."""
    outcomes: dict[str, AttackOutcome] = {}
    for split, stream in (("train", 0), ("test", 1)):
        x, y = _split(splits, split)
        if x is None or y is None:
            continue
        lo, hi = run.shard.bounds(x.shape[0])
        job = partial(
            _attack_shard,
            net=net,
            x=x[lo:hi],
            y=y[lo:hi],
            run=run,
            stream=stream,
            offset=lo,
            progress=run.ticker(f"attack-{split}", hi - lo),
        )
        outcomes[split] = run.batches.run(job)
    return outcomes


def _per_example(
    batch_size: int, *, net: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    return per_example(net, x, y, batch_size, device)


def _robust_figures(
    run: _Run, net: nn.Module, splits: Splits, outcomes: dict[str, AttackOutcome]
) -> Metrics:
    """Clean and robust loss and accuracy per split (per-example values gathered in
    index order over processes), and the robust gap. Robust accuracy is the chosen
    attack's; the robust loss is at the loss-maximising attack's points."""
    figures = {}
    for split, outcome in outcomes.items():
        x, y = _split(splits, split)
        lo, hi = run.shard.bounds(x.shape[0])
        job = partial(_per_example, net=net, x=x[lo:hi], y=y[lo:hi], device=run.device)
        losses, correct = run.batches.run(job)
        gather = run.shard.gather_cat
        figures[f"clean_{split}"] = split_figures(gather(losses), gather(correct))
        robust = gather(outcome.loss.double()), gather(outcome.correct.double())
        figures[f"robust_{split}"] = split_figures(*robust)
    return _metrics(figures)


def _attack_info(run: _Run, outcomes: dict[str, AttackOutcome]) -> AttackInfo:
    """Which attack gave which figure, what broke the examples of each split, and the
    robust accuracy of the chosen attack and of the loss attack side by side."""
    any_outcome = next(iter(outcomes.values()))
    broken_by: dict[str, dict[str, int]] = {}
    robust_acc: dict[str, dict[str, float | None]] = {any_outcome.attack: {}}
    robust_acc.setdefault(any_outcome.loss_attack, {})
    for split, outcome in outcomes.items():
        codes = run.shard.gather_cat(outcome.broken_code)
        broken_by[split] = broken_counts(codes, outcome.stages)
        # one figure per attack: under PGD the loss attack is the attack itself
        by_attack = {outcome.loss_attack: outcome.loss_correct, outcome.attack: outcome.correct}
        for attack, correct in by_attack.items():
            acc, se = accuracy(run.shard.gather_cat(correct.double()))
            robust_acc[attack].update({split: acc, f"{split}_se": se})
    if any_outcome.skipped:
        ran = ", ".join(s for s in any_outcome.stages if s != "clean")
        skipped = "; ".join(f"{k} skipped: {v}" for k, v in any_outcome.skipped.items())
        run.notes.append(f"{any_outcome.attack} ran {ran}; {skipped}")
    return AttackInfo(
        accuracy_from=any_outcome.attack,
        loss_from=any_outcome.loss_attack,
        hessian_points_from=any_outcome.loss_attack,
        broken_by=broken_by,
        robust_acc=robust_acc,
        skipped=dict(any_outcome.skipped),
    )


def _masking(run: _Run, net: nn.Module, splits: Splits) -> dict[str, Any]:
    """The gradient-masking checks on a stratified subset of the test split (train
    without one); the check for random output runs even when the others are off."""
    x, y = _split(splits, "test" if splits.has_test else "train")
    stochastic = stochastic_output_check(net, x, run.device)
    if run.cfg.masking_samples == 0:
        report = MaskingReport([stochastic], 0, 1e-3)  # alpha: masking_checks' default
    else:
        # Square at 100 queries: a sanity check (a black-box attack this short must not
        # beat the white-box one), not AutoAttack's 5000, which cost seconds per example;
        # one batch of n examples: out of memory, they run on half as many (with a note)
        report, _n = run_with_batch_retry(
            lambda n: masking_checks(net, x, y, run.cfg, run.device, n=n, square_queries=100),
            run.cfg.masking_samples,
            on_retry=lambda failed, smaller, message: run.notes.append(
                f"masking checks: out of memory on {failed} examples; ran on {smaller} ({message})"
            ),
        )
        report.checks.insert(0, stochastic)
    for check in report.checks:
        if check.passed is None:
            run.notes.append(f"gradient-masking check {check.name} {check.detail}")
    if not stochastic.passed:
        run.notes.append(f"random output: {stochastic.detail}")
    failed = [c.name for c in report.checks if c.passed is False and c is not stochastic]
    if failed:
        run.notes.append(
            "possible gradient masking: " + ", ".join(failed) + " (see attacks.masking)"
        )
    return report.to_dict()


def _bound(result: AuditResult, cfg: ScanConfig, splits: Splits) -> None:
    """The PAC-Bayes terms where there is WCI and a robust train loss, flagged vacuous
    when the bound is above ln C, the cross-entropy of a uniform guess."""
    if result.wci is None:
        return
    if result.metrics.robust_loss_train is None or splits.x_train is None:
        result.pac_bayes = PacBayes(delta=cfg.delta)
        return
    terms = bounds.pac_bayes_terms(
        result.metrics.robust_loss_train, result.wci, int(splits.x_train.shape[0]), cfg.delta
    )
    result.pac_bayes = PacBayes(
        **{f.name: getattr(terms, f.name) for f in fields(bounds.PacBayesTerms)}
    )
    classes = result.checkpoint.num_classes or splits.num_classes
    if classes and classes > 1 and result.pac_bayes.bound is not None:
        result.pac_bayes.uniform_loss = math.log(classes)
        result.pac_bayes.vacuous = result.pac_bayes.bound > result.pac_bayes.uniform_loss
        if result.pac_bayes.vacuous:
            result.notes.append(
                f"the PAC-Bayes bound {result.pac_bayes.bound:.3g} is vacuous: above "
                f"ln {classes} = {result.pac_bayes.uniform_loss:.3g}, the loss of a uniform guess"
            )


def _finish(result: AuditResult, run: _Run) -> None:
    """What sums up the stages that ran: the flagged layers, the batch size used."""
    flagged = [la.name for la in result.layers if la.flag]
    if flagged:
        result.notes.append(
            f"{len(flagged)} layer(s) flagged (a trace at or below 0 or within 2 SE of it, "
            "or not converged; each layer's flag says which): " + ", ".join(flagged[:5])
        )
    result.config["batch_size_used"] = run.batches.size


# -- setting up ---------------------------------------------------------------------------
def _data(
    data: Any,
    loaded: LoadedCheckpoint,
    options: LoadOptions,
    run: _Run,
    threat_sources: dict[str, str],
    stages: Stages,
) -> tuple[Splits | None, AuditResult]:
    """The data the scan runs on (None: weights only) and the result before any measurement."""
    cfg = run.cfg
    splits, reason = (
        (None, "weights only: no data asked for")
        if options.weights_only
        else choose_data(data, loaded, cfg, run.notes)
    )
    result = _new_result(loaded, run, threat_sources)
    if splits is None:
        result.dataset = DatasetInfo(name="none", reason=reason, lo=cfg.lo, hi=cfg.hi)
        run.notes.append("no data: every data-dependent figure is null")
        stages.plan = stages.plan[:2]
    else:
        result.dataset = _dataset_info(splits, reason, cfg)
    stages.result = result
    return splits, result


def _new_result(loaded: LoadedCheckpoint, run: _Run, threat_sources: dict[str, str]) -> AuditResult:
    """The result before any measurement: checkpoint, config, environment, inventory."""
    info = CheckpointInfo(**{f.name: getattr(loaded.info, f.name) for f in fields(CheckpointInfo)})
    result = AuditResult(
        checkpoint=info,
        config=run.cfg.to_dict(),
        environment=_environment(run.device, run.cfg.dtype),
        notes=run.notes,
    )
    result.config["device"] = str(run.device)
    result.config["thread_policy"] = api_thread_policy(run.cfg.threads)
    result.config["processes"] = run.shard.world
    result.config["threat_model_source"] = threat_sources
    result.config["preprocessing_source"] = dict(loaded.sources)
    result.other_parameters = [
        OtherParameter(name=n, shape=list(p.shape), numel=p.numel(), frob_norm=_frob(p), kind=kind)
        for n, p, kind in other_parameters(loaded.model)
    ]
    result.layers = [
        LayerResult(
            name=layer.name,
            shape=layer.shape,
            numel=layer.numel,
            frob_norm=_frob(layer.param),
            trace=None,
            trace_se=None,
            probes=0,
            method="none",
            converged=None,
        )
        for layer in weight_layers(loaded.model)
    ]
    if not result.layers:
        run.notes.append("the model has no parameter named *.weight with dim >= 2: no WCI layers")
    return result


def _dataset_info(splits: Splits, reason: str, cfg: ScanConfig) -> DatasetInfo:
    return DatasetInfo(
        name=splits.name,
        n_train=splits.x_train.shape[0] if splits.has_train else None,
        n_test=splits.x_test.shape[0] if splits.has_test else None,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        source=splits.source,
        reason=reason,
        lo=cfg.lo,
        hi=cfg.hi,
        n_train_total=splits.n_train_total,
        n_test_total=splits.n_test_total,
    )


# ---------------------------------------------------------------------------------------
class _BatchSize:
    """The batch size of the batched stages, halved for good after an out-of-memory error.

    Each retry is written to ``notes`` (SPEC: every setting is part of the report), and
    the size finally used goes to ``config["batch_size_used"]``.
    """

    def __init__(self, size: int, notes: list[str]) -> None:
        self.size = size
        self._notes = notes

    def run(self, fn: Callable[[int], Any], *, retry: bool = True) -> Any:
        if not retry:
            return fn(self.size)
        result, self.size = run_with_batch_retry(fn, self.size, on_retry=self._note)
        return result

    def _note(self, failed: int, smaller: int, message: str) -> None:
        self._notes.append(
            f"out of memory at batch size {failed}; retried with {smaller} ({message})"
        )


def _load_options(options: LoadOptions | None, *keywords: Any) -> LoadOptions:
    """One :class:`LoadOptions` from ``options`` or from scan()'s loading keywords."""
    names = ("arch", "arch_args", "num_classes", "mean", "std", "input_size", "weights_only")
    given = dict(zip(names, keywords, strict=True))
    if options is None:
        return LoadOptions(**given)
    extra = [k for k, v in given.items() if v not in (None, False)]
    if extra:
        raise ConfigError(
            f"pass the loading options in options= or as keywords, not both ({', '.join(extra)})"
        )
    return options


def _threat_model(cfg: ScanConfig, loaded: LoadedCheckpoint) -> tuple[ScanConfig, dict[str, str]]:
    """eps and norm: the flag > the checkpoint's metadata > the default (8/255, linf)."""
    record = loaded.record
    where = loaded.info.path
    meta_eps = meta_norm = None
    if record is not None and cfg.eps is None and record.eps is not None:
        meta_eps = _from_metadata(parse_eps, record.eps, "eps", where)
    if record is not None and cfg.norm is None and record.norm is not None:
        meta_norm = _from_metadata(parse_norm, record.norm, "norm", where)
    eps = resolve("eps", cfg.eps, meta_eps, None, DEFAULT_EPS)
    norm = resolve("norm", cfg.norm, meta_norm, None, Norm.linf)
    return cfg.with_threat_model(eps.value, norm.value), {"eps": eps.source, "norm": norm.source}


def _from_metadata(parse: Callable[[str], Any], text: str, key: str, where: str) -> Any:
    try:
        return parse(text)
    except ConfigError:
        raise CheckpointError(
            f"metadata key {key!r} in {where} ({text[:40]!r}) is not a valid {key}; pass --{key}"
        ) from None


def _load(checkpoint: Any, options: LoadOptions) -> LoadedCheckpoint:
    if isinstance(checkpoint, LoadedCheckpoint):
        return checkpoint
    if isinstance(checkpoint, nn.Module):
        return loaded_from_module(checkpoint, options)
    return load_checkpoint(checkpoint, options=options)


def _split(splits: Splits, split: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return (splits.x_train, splits.y_train) if split == "train" else (splits.x_test, splits.y_test)


def _metrics(figures: dict[str, Any]) -> Metrics:
    m = Metrics()
    for key, fig in figures.items():
        kind, split = key.split("_")
        setattr(m, f"{kind}_acc_{split}", fig.acc)
        setattr(m, f"{kind}_loss_{split}", fig.loss)
        setattr(m, f"{kind}_acc_{split}_se", fig.acc_se)
        setattr(m, f"{kind}_loss_{split}_se", fig.loss_se)
    if "robust_train" in figures and "robust_test" in figures:
        for k, v in robust_gap(figures["robust_train"], figures["robust_test"]).items():
            setattr(m, k, v)
    return m


def _frob(p: torch.Tensor) -> float:
    return float(p.detach().double().norm())


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


def checkpoint_stem(path: str | os.PathLike[str]) -> str:
    """File name stem for outputs: ``model.safetensors`` -> ``model``; a folder -> its name."""
    p = Path(path)
    return p.name if p.is_dir() else p.stem
