"""The scan's first stages: the checkpoint (with its threat model and its weight
inventory), then the data the scan runs on.

Example:
    >>> from wciaudit.config import LoadOptions, ScanConfig
    >>> loaded = load("sample_models/digits_cnn.safetensors", LoadOptions())  # doctest: +SKIP
    >>> resolve_threat_model(ScanConfig(), loaded)[1]  # doctest: +SKIP
    {'eps': 'metadata', 'norm': 'default'}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..checkpoints import LoadedCheckpoint, load_checkpoint, loaded_from_module, resolve
from ..config import DEFAULT_EPS, DEFAULT_NORM, LoadOptions, ScanConfig, parse_eps, parse_norm
from ..data import Splits
from ..data_choice import choose_data
from ..errors import CheckpointError, ConfigError
from ..model import frob_norm, other_parameters, weight_layers
from ..result import DatasetInfo, LayerResult, OtherParameter

__all__ = [
    "DataChoice",
    "Inventory",
    "choose",
    "inventory",
    "load",
    "load_options",
    "resolve_threat_model",
]

_LOAD_KEYWORDS = ("arch", "arch_args", "num_classes", "mean", "std", "input_size", "weights_only")


def load_options(options: LoadOptions | None, keywords: dict[str, Any]) -> LoadOptions:
    """One :class:`LoadOptions` from ``options`` or from scan()'s loading keywords.

    Raises:
        ConfigError: both given.
    """
    if options is None:
        return LoadOptions(**keywords)
    extra = [k for k in _LOAD_KEYWORDS if keywords.get(k) not in (None, False)]
    if extra:
        raise ConfigError(
            f"pass the loading options in options= or as keywords, not both ({', '.join(extra)})"
        )
    return options


def load(checkpoint: Any, options: LoadOptions) -> LoadedCheckpoint:
    """A path, a :class:`LoadedCheckpoint` or an ``nn.Module`` (audited on a copy)."""
    if isinstance(checkpoint, LoadedCheckpoint):
        return checkpoint
    if isinstance(checkpoint, nn.Module):
        return loaded_from_module(checkpoint, options)
    return load_checkpoint(checkpoint, options=options)


def resolve_threat_model(
    config: ScanConfig, loaded: LoadedCheckpoint
) -> tuple[ScanConfig, dict[str, str]]:
    """eps and norm: the flag > the checkpoint's metadata > the default (8/255, linf);
    the config with both set, and where each came from."""
    record = loaded.record
    where = loaded.info.path
    meta_eps = meta_norm = None
    if record is not None and config.eps is None and record.eps is not None:
        meta_eps = _from_metadata(parse_eps, record.eps, "eps", where)
    if record is not None and config.norm is None and record.norm is not None:
        meta_norm = _from_metadata(parse_norm, record.norm, "norm", where)
    eps = resolve("eps", config.eps, meta_eps, None, DEFAULT_EPS)
    norm = resolve("norm", config.norm, meta_norm, None, DEFAULT_NORM)
    sources = {"eps": eps.source, "norm": norm.source}
    return config.with_threat_model(eps.value, norm.value), sources


def _from_metadata(parse: Callable[[str], Any], text: str, key: str, where: str) -> Any:
    try:
        return parse(text)
    except ConfigError:
        raise CheckpointError(
            f"metadata key {key!r} in {where} ({text[:40]!r}) is not a valid {key}; pass --{key}"
        ) from None


@dataclass(frozen=True)
class Inventory:
    """What the checkpoint holds: the WCI layers (norms measured, traces not yet) and
    the other parameters, each with its Frobenius norm."""

    layers: list[LayerResult]
    other: list[OtherParameter]


def inventory(model: nn.Module) -> Inventory:
    """Every parameter named ``*.weight`` with ``dim() >= 2`` (tied weights once) as a
    layer, the rest as other parameters (SPEC: Weight-Curvature Index)."""
    other = [
        OtherParameter(
            name=n, shape=list(p.shape), numel=p.numel(), frob_norm=frob_norm(p), kind=kind
        )
        for n, p, kind in other_parameters(model)
    ]
    layers = [
        LayerResult(
            name=layer.name,
            shape=layer.shape,
            numel=layer.numel,
            frob_norm=frob_norm(layer.param),
            trace=None,
            trace_se=None,
            probes=0,
            method="none",
            converged=None,
        )
        for layer in weight_layers(model)
    ]
    return Inventory(layers, other)


@dataclass(frozen=True)
class DataChoice:
    """The data the scan runs on (``splits`` None: none, weights only) and why."""

    splits: Splits | None
    dataset: DatasetInfo


def choose(data: Any, loaded: LoadedCheckpoint, options: LoadOptions, run: Any) -> DataChoice:
    """The data of the scan (:func:`wciaudit.data_choice.choose_data`) and its record;
    ``run`` is the :class:`~wciaudit.pipeline.run.ScanRun` the choice's notes go to."""
    config = run.config
    if options.weights_only:
        splits, reason = None, "weights only: no data asked for"
    else:
        splits, reason = choose_data(data, loaded, config, run.notes)
    if splits is None:
        return DataChoice(None, DatasetInfo(name="none", reason=reason, lo=config.lo, hi=config.hi))
    dataset = DatasetInfo(
        name=splits.name,
        n_train=splits.x_train.shape[0] if splits.has_train else None,
        n_test=splits.x_test.shape[0] if splits.has_test else None,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        source=splits.source,
        reason=reason,
        lo=config.lo,
        hi=config.hi,
        n_train_total=splits.n_train_total,
        n_test_total=splits.n_test_total,
    )
    return DataChoice(splits, dataset)
