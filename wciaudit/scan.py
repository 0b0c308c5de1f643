"""One audit, start to end: load -> data -> attack -> measure -> bound -> result.

:func:`scan` is the public entry point; the command line is a thin layer over it.

Example:
    >>> from wciaudit import scan
    >>> result = scan("sample_models/digits_resnet_pgd.safetensors", "sample", eps="0.1")  # doctest: +SKIP
    >>> result.wci, result.metrics.gap_loss  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import bounds
from .attacks.pgd import attack_split
from .checkpoints import LoadedCheckpoint, load_checkpoint
from .config import ScanConfig
from .curvature import layer_traces
from .data import SAMPLE_NAMES, Splits, fit_to_model, load_data, stratified_subset
from .distributed import Shard
from .errors import ConfigError, DataError
from .metrics import per_example, robust_gap, split_figures
from .model import AuditedModel, eval_mode, no_tf32, other_parameters, resolve_device, weight_layers
from .result import (
    AuditResult,
    CheckpointInfo,
    DatasetInfo,
    Environment,
    LayerResult,
    Metrics,
    OtherParameter,
    PacBayes,
    Timings,
)
from .retry import run_with_batch_retry

#: progress(stage, advance, total): stage is "attack-train", "attack-test" or "curvature";
#: total is None where it is not known in advance (Hutchinson probes).
ProgressCallback = Callable[[str, int, "int | None"], None]

DATA_FORMS = "--data sample | file.npz | DIR (ImageFolder with train/ and test/ or val/) | cifar10:DIR | cifar100:DIR"


def scan(
    checkpoint: str | os.PathLike[str] | LoadedCheckpoint | nn.Module,
    data: str | os.PathLike[str] | Splits | None = None,
    *,
    config: ScanConfig | None = None,
    arch: str | None = None,
    arch_args: dict[str, Any] | str | None = None,
    num_classes: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    weights_only: bool = False,
    progress: ProgressCallback | None = None,
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
        arch, arch_args, num_classes, mean, std: checkpoint loading options.
        weights_only: report weight norms and the parameter inventory alone.
        progress: optional callback ``progress(stage, advance, total)``.
        shard: this process's place under torchrun (see :mod:`wciaudit.distributed`);
            default: a single process.

    Returns:
        The :class:`AuditResult` (gate block untouched: see :mod:`wciaudit.gate`).

    Raises:
        CheckpointError, DataError, ConfigError: with a one-line message.
    """
    t_start = time.perf_counter()
    started_at = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    cfg = _make_config(config, settings)
    shard = shard or Shard()
    device = shard.device if shard.active and shard.device.type == "cuda" else resolve_device(cfg.device)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    notes: list[str] = []

    # -- load ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    loaded = _load(checkpoint, arch=arch, arch_args=arch_args, num_classes=num_classes, mean=mean, std=std)
    load_s = time.perf_counter() - t0

    # -- data ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    splits, data_reason = (None, "weights only: no data asked for") if weights_only else _resolve_data(data, loaded, cfg)
    data_s = time.perf_counter() - t0

    net = AuditedModel(loaded.model, loaded.info.mean, loaded.info.std).to(device=device, dtype=dtype)
    layers = weight_layers(loaded.model)
    result = AuditResult(
        checkpoint=CheckpointInfo(**{f.name: getattr(loaded.info, f.name) for f in fields(CheckpointInfo)}),
        config=cfg.to_dict(),
        environment=_environment(device, cfg.dtype),
        notes=notes,
    )
    result.config["device"] = str(device)
    result.config["processes"] = shard.world
    result.other_parameters = [
        OtherParameter(name=n, shape=list(p.shape), numel=p.numel(), frob_norm=_frob(p), kind=kind)
        for n, p, kind in other_parameters(loaded.model)
    ]
    result.layers = [
        LayerResult(name=layer.name, shape=layer.shape, numel=layer.numel, frob_norm=_frob(layer.param),
                    trace=None, trace_se=None, probes=0, method="none", converged=None)
        for layer in layers
    ]
    if not layers:
        notes.append("the model has no parameter named *.weight with dim >= 2: no WCI layers")

    if splits is None:
        result.dataset = DatasetInfo(name="none", reason=data_reason, lo=cfg.lo, hi=cfg.hi)
        result.timings = Timings(load_s=load_s, data_s=data_s, total_s=time.perf_counter() - t_start, started_at=started_at)
        notes.append("no data: every data-dependent figure is null")
        return result

    result.dataset = DatasetInfo(
        name=splits.name,
        n_train=splits.x_train.shape[0] if splits.has_train else None,
        n_test=splits.x_test.shape[0] if splits.has_test else None,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        source=splits.source,
        reason=data_reason,
        lo=cfg.lo,
        hi=cfg.hi,
        n_train_total=splits.n_train_total,
        n_test_total=splits.n_test_total,
    )

    batches = _BatchSize(cfg.batch_size, notes)
    with eval_mode(net), no_tf32():
        _check_model_accepts(net, splits, device, dtype)

        # -- attack (each process its shard; starts seeded by global index) ------------
        t0 = time.perf_counter()
        adv: dict[str, torch.Tensor] = {}
        for split, stream in (("train", 0), ("test", 1)):
            x, y = _split(splits, split)
            if x is None:
                continue
            lo, hi = shard.bounds(x.shape[0])
            stage = f"attack-{split}"
            tick = None if progress is None else (lambda k, s=stage, n=hi - lo: progress(s, k, n))
            adv[split] = batches.run(
                lambda b, x=x, y=y, lo=lo, hi=hi, tick=tick, stream=stream: attack_split(
                    net, x[lo:hi], y[lo:hi], cfg.with_(batch_size=b), device,
                    stream=stream, index_offset=lo, progress=tick,
                )
            )
        attack_s = time.perf_counter() - t0

        # -- robust figures (per-example values gathered in index order) -------------
        t0 = time.perf_counter()
        figures = {}
        for split in adv:
            x, y = _split(splits, split)
            lo, hi = shard.bounds(x.shape[0])
            for kind, inputs in (("clean", x[lo:hi]), ("robust", adv[split])):
                losses, correct = batches.run(
                    lambda b, inputs=inputs, y=y, lo=lo, hi=hi: per_example(net, inputs, y[lo:hi], b, device)
                )
                figures[f"{kind}_{split}"] = split_figures(shard.gather_cat(losses), shard.gather_cat(correct))
        result.metrics = _metrics(figures)
        eval_s = time.perf_counter() - t0

        # -- curvature ----------------------------------------------------------------
        t0 = time.perf_counter()
        hessian_split = "train" if "train" in adv else "test"
        if hessian_split == "test":
            notes.append("no train split: curvature is measured on the test split, the gap and the bound are null")
        y_full = _split(splits, hessian_split)[1]
        idx = torch.arange(y_full.shape[0])
        if y_full.shape[0] > cfg.hessian_samples:
            idx = stratified_subset(y_full, cfg.hessian_samples, cfg.seed)
        if idx.shape[0] < shard.world:
            raise ConfigError(f"--hessian-samples {idx.shape[0]} is smaller than the {shard.world} processes")
        # the subset's rows that this process attacked, gathered so that every process
        # holds the subset in index order, then sharded again for the products
        lo, hi = shard.bounds(y_full.shape[0])
        mine = idx[(idx >= lo) & (idx < hi)] - lo
        x_h_all = shard.gather_cat(adv[hessian_split][mine])
        h_lo, h_hi = shard.bounds(idx.shape[0])
        x_h, y_h = x_h_all[h_lo:h_hi], y_full[idx][h_lo:h_hi]
        result.dataset.hessian_samples = int(idx.shape[0])
        h_losses = batches.run(lambda b: per_example(net, x_h, y_h, b, device))[0]
        result.metrics.hessian_loss = float(shard.all_reduce_sum(h_losses.sum().reshape(1))[0]) / idx.shape[0]
        if layers:
            tick = None if progress is None else (lambda kind, k: progress("curvature", k, None))
            # under torchrun a retry on one process would desynchronise the all-reduces
            estimates = batches.run(
                lambda b: layer_traces(
                    net, x_h, y_h, [f"model.{layer.name}" for layer in layers],
                    method=cfg.curvature.value, tol=cfg.tol, max_probes=cfg.max_probes,
                    min_probes=cfg.min_probes, seed=cfg.seed, batch_size=b,
                    device=device, progress=tick, n_total=int(idx.shape[0]),
                    reduce=shard.all_reduce_sum if shard.active else None,
                ),
                retry=not shard.active,
            )
            for layer, est in zip(result.layers, estimates, strict=True):
                _fill_layer(layer, est)
        trace_s = time.perf_counter() - t0

    # -- WCI and bound ------------------------------------------------------------------
    if layers:
        wci, wci_se = bounds.weight_curvature_index(
            [la.frob_norm for la in result.layers],
            [la.trace for la in result.layers],
            [la.trace_se for la in result.layers],
        )
        result.wci, result.wci_se = wci, wci_se
        if result.metrics.robust_loss_train is not None:
            terms = bounds.pac_bayes_terms(result.metrics.robust_loss_train, wci, int(splits.x_train.shape[0]), cfg.delta)
            result.pac_bayes = PacBayes(**{f.name: getattr(terms, f.name) for f in fields(bounds.PacBayesTerms)})
        else:
            result.pac_bayes = PacBayes(delta=cfg.delta)
    flagged = [la.name for la in result.layers if la.flag]
    if flagged:
        notes.append(f"{len(flagged)} layer(s) flagged (non-positive trace or not converged): " + ", ".join(flagged[:5]))
    result.config["batch_size_used"] = batches.size
    result.timings = Timings(
        load_s=load_s, data_s=data_s, attack_s=attack_s, eval_s=eval_s, trace_s=trace_s,
        total_s=time.perf_counter() - t_start, started_at=started_at,
    )
    return result


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
        self._notes.append(f"out of memory at batch size {failed}; retried with {smaller} ({message})")


def _make_config(config: ScanConfig | None, settings: dict[str, Any]) -> ScanConfig:
    if config is not None and settings:
        return config.with_(**settings)
    if config is not None:
        return config
    known = {f.name for f in fields(ScanConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return ScanConfig(**settings)


def _load(checkpoint: Any, **options: Any) -> LoadedCheckpoint:
    if isinstance(checkpoint, LoadedCheckpoint):
        return checkpoint
    if isinstance(checkpoint, nn.Module):
        model = copy.deepcopy(checkpoint).float().cpu().eval()
        digest = hashlib.sha256()
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
        info = CheckpointInfo(
            path="<in-memory module>", sha256=digest.hexdigest(), format="module",
            arch=type(checkpoint).__name__, num_params=sum(p.numel() for p in model.parameters()),
            mean=list(options["mean"]) if options.get("mean") is not None else None,
            std=list(options["std"]) if options.get("std") is not None else None,
        )
        return LoadedCheckpoint(model=model, info=info, data_config={"input_size": None}, dataset_hint=None)
    return load_checkpoint(checkpoint, **options)


def _resolve_data(data: Any, loaded: LoadedCheckpoint, cfg: ScanConfig) -> tuple[Splits, str]:
    kwargs = dict(
        data_config=loaded.data_config, lo=cfg.lo, hi=cfg.hi,
        train_samples=cfg.train_samples, test_samples=cfg.test_samples, seed=cfg.seed,
    )
    input_size = loaded.data_config.get("input_size") if loaded.data_config else None
    if isinstance(data, Splits):
        splits, reason = data, "given as tensors"
    elif data is not None:
        splits, reason = load_data(str(data), **kwargs), f"--data {data}"
    else:
        hint = loaded.dataset_hint
        if hint is not None and hint.lower() in SAMPLE_NAMES:
            splits = load_data("sample", **kwargs)
            reason = f"no --data given; the checkpoint's metadata names dataset {hint!r}, which wciaudit ships"
        else:
            splits = load_data("sample", **kwargs)
            fitted, _ = fit_to_model(splits, input_size)
            if not _accepts(loaded.model, fitted):
                named = f" (its metadata names dataset {hint!r}, which wciaudit does not ship)" if hint else ""
                raise DataError(
                    f"no usable data for this model{named}: pass {DATA_FORMS}, or --weights-only"
                )
            reason = "no --data given; the model accepts the shipped sample dataset's input shape"
            if hint:
                reason += f" (its metadata names dataset {hint!r}, which wciaudit does not ship)"
    if splits.name == "digits":
        # only the shipped sample is adapted to the model's input size; a user's own
        # data must fit the model as it is (ImageFolder data is already transformed)
        splits, note = fit_to_model(splits, input_size)
        if note:
            reason += f"; {note}"
    if not (splits.has_train or splits.has_test):
        raise DataError("the dataset has neither a train nor a test split")
    return splits, reason


def _accepts(model: nn.Module, splits: Splits) -> bool:
    """Whether the bare model (CPU, float32) takes the data: the check below, as a bool."""
    try:
        with eval_mode(model):
            _check_model_accepts(model, splits, torch.device("cpu"), torch.float32)
    except DataError:
        return False
    return True


def _check_model_accepts(net: nn.Module, splits: Splits, device: torch.device, dtype: torch.dtype) -> None:
    x = splits.x_train if splits.has_train else splits.x_test
    try:
        with torch.no_grad():
            out = net(x[:2].to(device, dtype))
    except Exception as exc:  # a user model may raise anything on a wrong shape
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"the model does not accept inputs of shape {list(x.shape[1:])}: {msg}") from None
    if out.dim() != 2 or out.shape[0] != 2:
        raise DataError(f"the model must return logits of shape (N, classes); it returned {list(out.shape)}")
    if out.shape[1] < splits.num_classes:
        raise DataError(
            f"the data has labels up to {splits.num_classes - 1} but the model has {out.shape[1]} outputs"
        )


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


def _fill_layer(layer: LayerResult, est: Any) -> None:
    layer.trace, layer.trace_se, layer.probes = est.trace, est.se, est.probes
    layer.method, layer.converged, layer.stop_reason = est.method, est.converged, est.stop_reason
    layer.history = est.history
    layer.rel_se = est.rel_se if est.rel_se is None or math.isfinite(est.rel_se) else None
    layer.wci_term = bounds.wci_terms([layer.frob_norm], [est.trace])[0]
    layer.wci_term_se = bounds.wci_term_se(layer.frob_norm, est.trace, est.se)
    flags = []
    if est.trace <= 0:
        flags.append("non-positive trace: contributes 0 to WCI")
    elif est.se > 0 and est.trace < 2 * est.se:
        flags.append("trace within 2 SE of 0")
    if not est.converged:
        flags.append(f"not converged: relative SE above tol at the {est.probes}-probe cap")
    layer.flag = "; ".join(flags) or None


def _frob(p: torch.Tensor) -> float:
    return float(p.detach().double().norm())


def _environment(device: torch.device, dtype: str) -> Environment:
    import timm

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return Environment(
        python=platform.python_version(),
        torch=torch.__version__,
        timm=timm.__version__,
        platform=platform.platform(terse=True),
        device=str(device),
        device_name=name,
        dtype=dtype,
    )


def checkpoint_stem(path: str | os.PathLike[str]) -> str:
    """File name stem for outputs: ``model.safetensors`` -> ``model``; a folder -> its name."""
    p = Path(path)
    return p.name if p.is_dir() else p.stem
