"""WCI during training: a monitor for a PyTorch loop, and an experimental WCI-driven LR rule.

:class:`WCIMonitor` measures the Weight-Curvature Index (SPEC: "Weight-Curvature
Index") on one held batch every ``every`` calls: PGD examples of the batch at the
current weights (:func:`wciaudit.attacks.pgd.perturb`), then per-layer traces of the
adversarial-loss Hessian (:func:`wciaudit.curvature.layer_traces`, the exact
Gauss-Newton route where it applies, else Hutchinson with few probes), with its
standard error. It only observes: the model's train/eval flags, its parameters and
their ``.grad``, torch's global CPU and CUDA random states and the grad mode are the
same after a measurement as before, so a seeded run gives the same weights with and
without it (tested). The same attack seed is used at every measurement, so two
measurements differ by the weights, not by the attack's noise.

:class:`WCILRAdjuster` is an opt-in, **experimental** heuristic in the spirit of the
paper (Xu & Zhang, arXiv 2410.07719), which relates a rising WCI to robust
overfitting: when WCI rises above its running minimum by a factor ``threshold``, the
learning rate of every parameter group is multiplied by ``factor``. It is not a
result of the paper and has no guarantee; measure its effect on your run.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> x, y = torch.rand(16, 1, 2, 2), torch.randint(0, 3, (16,))
    >>> monitor = WCIMonitor(net, x, y, every=2, eps=0.1, steps=2)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> adjust = WCILRAdjuster(opt, threshold=1.2, factor=0.5)
    >>> for epoch in range(4):
    ...     # ... one epoch of training ...
    ...     record = monitor.step(epoch)
    ...     if record is not None:
    ...         cut = adjust.step(record.wci)
    >>> [r.step for r in monitor.records]
    [1, 3]
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import bounds
from .attacks.pgd import perturb
from .config import Attack, ScanConfig, config_from_settings
from .curvature import Objective, TraceEstimate, layer_traces
from .errors import ConfigError
from .model import eval_mode, frob_norm, no_tf32, weight_layers
from .pipeline.bound import wci_figures
from .result import write_atomic

__all__ = [
    "MONITOR_CONFIG",
    "WCIMonitor",
    "WCIRecord",
    "WCILRAdjuster",
    "batch_wci_se",
    "monitor_config",
]

#: the monitor's settings where none are given: a scan's, cheaper and looser (PGD-5,
#: WCI to 10 % relative SE, at most 50 probes per layer)
MONITOR_CONFIG = ScanConfig(steps=5, tol=0.1, max_probes=50)


def monitor_config(config: ScanConfig | None, settings: dict[str, Any]) -> ScanConfig:
    """The monitor's config: ``config`` (default :data:`MONITOR_CONFIG`) with the keyword
    ``settings`` on top; eps / norm left unset take the defaults (no checkpoint here).

    Raises:
        ConfigError: an unknown setting or an invalid value.
    """
    config = config_from_settings(MONITOR_CONFIG if config is None else config, settings)
    if config.attack not in (Attack.pgd, Attack.fgsm):
        raise ConfigError(f"the monitor attacks with pgd or fgsm, got {config.attack.value}")
    return config.with_default_threat_model()


#: attack stream of the monitor (scans use 0 for train and 1 for test)
_STREAM = 2


@dataclass
class WCIRecord:
    """One measurement.

    Attributes:
        step: the caller's step or epoch number.
        wci, wci_se: WCI and its standard error as an estimate of the WCI of the
            training data at these weights (:func:`batch_wci_se`): it covers the
            probes, the held batch as a sample of the training data, and the attack's
            random starts (drawn per example, so inside the spread between groups of
            the batch). It does not cover the step-to-step change: the batch and the
            attack seed are the same at every measurement, so two records differ by
            the weights, and their difference is far more precise than the two SEs.
        loss_adv, acc_adv: mean cross-entropy and accuracy on the PGD examples of the
            held batch (the loss the Hessian is taken of).
        sum_frob_sq, sum_trace: the ablations sum_k ||W_k||_F^2 and sum_k Tr(H_k).
        seconds: wall time of the measurement.
        terms: per-layer WCI term ||W_k||_F sqrt(max(Tr H_k, 0)), by parameter name.
        methods: per-layer route, ``exact-ggn`` or ``hutchinson``.
    """

    step: int
    wci: float
    wci_se: float
    loss_adv: float
    acc_adv: float
    sum_frob_sq: float
    sum_trace: float
    seconds: float
    terms: dict[str, float] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)


def batch_wci_se(frobs: list[float], estimates: list[TraceEstimate], n: int, seed: int) -> float:
    """SE of WCI measured on a batch of n examples, as an estimate of the WCI of the
    data the batch was drawn from (a population far larger than the batch, f = 0).

    The scan's WCI figures (:func:`wciaudit.pipeline.bound.wci_figures`) with the
    batch as the Hessian subset of an infinite population: at f = 0 Cochran's
    two-stage variance is the spread between the groups alone, which holds every source
    drawn per group or per example: the probes, the batch as a sample, and the attack's
    random starts. Layers without group shares (none in practice) fall back to
    per-layer SEs in quadrature, which then cover the probes only.
    """
    ses = [e.se for e in estimates]
    return wci_figures(frobs, estimates, ses, n=n, n_population=math.inf, seed=seed).se


@contextmanager
def _rng_preserved(device: torch.device) -> Iterator[None]:
    """Torch's global random states as they were, whatever runs inside."""
    cpu = torch.get_rng_state()
    cuda = (
        torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else None
    )
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class WCIMonitor:
    """Measure WCI on a held batch every ``every`` calls to :meth:`step`.

    Args:
        model: the model as the training loop calls it: inputs in the data range
            [config.lo, config.hi] (put input normalisation inside it), logits out.
        x, y: the held batch (e.g. 128-512 training examples), kept on the CPU and
            moved to the model's device per measurement.
        every: measure on calls ``every - 1, 2 * every - 1, ...`` of :meth:`step`.
        config: the scan's settings (:class:`~wciaudit.config.ScanConfig`), each
            meaning what it means in a scan (``tol`` is WCI's relative SE target);
            or pass them as keyword ``settings``. Default :data:`MONITOR_CONFIG`
            (PGD-5, tol 0.1, 50 probes). ``attack`` is ``pgd`` or ``fgsm``; the
            Hessian is taken over the whole batch on the model's own device and dtype,
            so ``hessian_samples``, ``train_samples``, ``test_samples``,
            ``masking_samples``, ``attack_spread``, ``delta``, ``device``, ``dtype`` and
            ``threads`` are a scan's alone.
        csv_path: rewrite this CSV (atomically) after each measurement.
        tensorboard: a log folder (needs the ``tensorboard`` package) or any object
            with ``add_scalar(tag, value, step)`` such as a ``SummaryWriter``.
        tag: prefix of the TensorBoard scalars.
        on_measure: called with each :class:`WCIRecord`, e.g. a :class:`WCILRAdjuster`.

    Raises:
        ConfigError: a malformed batch or setting, or ``tensorboard`` given as a folder
            without the package installed.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        every: int = 1,
        config: ScanConfig | None = None,
        csv_path: str | os.PathLike[str] | None = None,
        tensorboard: Any = None,
        tag: str = "wciaudit",
        on_measure: Callable[[WCIRecord], Any] | None = None,
        **settings: Any,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every must be a positive integer, got {every!r}")
        if (
            not isinstance(x, torch.Tensor)
            or not isinstance(y, torch.Tensor)
            or x.shape[0] != y.shape[0]
            or x.shape[0] == 0
        ):
            raise ConfigError("x and y must be tensors with the same, non-zero number of examples")
        if y.dim() != 1 or y.is_floating_point():
            raise ConfigError(
                f"y must hold integer class labels of shape (N,), got {y.dtype} {list(y.shape)}"
            )
        config = monitor_config(config, settings)
        self.model = model
        self.x = x.detach().cpu()
        self.y = y.detach().cpu()
        self.every = every
        self.config = config
        self.csv_path = Path(csv_path) if csv_path is not None else None
        self.tag = tag
        self.on_measure = on_measure
        self.records: list[WCIRecord] = []
        self._calls = 0
        self._writer = _writer(tensorboard)
        self._names = [layer.name for layer in weight_layers(model)]
        if not self._names:
            raise ConfigError(
                "the model has no parameter named *.weight with dim >= 2: nothing to measure"
            )

    def step(self, step: int | None = None) -> WCIRecord | None:
        """Count one step (or epoch); measure when the count reaches a multiple of ``every``.

        Returns:
            The new :class:`WCIRecord`, or None when this call does not measure.
        """
        self._calls += 1
        if self._calls % self.every:
            return None
        return self.measure(self._calls - 1 if step is None else step)

    @no_tf32()
    def measure(self, step: int | None = None) -> WCIRecord:
        """Measure now, whatever the count; see the class docstring for what is preserved."""
        t0 = time.perf_counter()
        cfg = self.config
        param = next(self.model.parameters())
        device, dtype = param.device, param.dtype
        with _rng_preserved(device), torch.enable_grad(), eval_mode(self.model):
            x_adv = torch.cat(
                [
                    perturb(
                        self.model,
                        self.x[i : i + cfg.batch_size].to(device, dtype),
                        self.y[i : i + cfg.batch_size].to(device),
                        cfg,
                        start=i,
                        stream=_STREAM,
                    ).cpu()
                    for i in range(0, self.x.shape[0], cfg.batch_size)
                ]
            )
            with torch.no_grad():
                losses, correct = [], []
                for i in range(0, x_adv.shape[0], cfg.batch_size):
                    z = self.model(x_adv[i : i + cfg.batch_size].to(device, dtype))
                    yb = self.y[i : i + cfg.batch_size].to(device)
                    losses.append(F.cross_entropy(z, yb, reduction="sum").item())
                    correct.append((z.argmax(1) == yb).sum().item())
            params = dict(self.model.named_parameters())
            frobs = [frob_norm(params[n]) for n in self._names]
            objective = Objective(self.model, x_adv, self.y, self._names, cfg.batch_size, device)
            # the weight norms make ``tol`` WCI's target, as in a scan
            estimates = layer_traces(objective, cfg, weight_norms=frobs)
        traces = [e.trace for e in estimates]
        wci = math.fsum(bounds.wci_terms(frobs, traces))
        n = self.x.shape[0]
        wci_se = batch_wci_se(frobs, estimates, n, cfg.seed)
        record = WCIRecord(
            step=int(len(self.records) if step is None else step),
            wci=wci,
            wci_se=wci_se,
            loss_adv=math.fsum(losses) / n,
            acc_adv=sum(correct) / n,
            sum_frob_sq=math.fsum(f * f for f in frobs),
            sum_trace=math.fsum(traces),
            seconds=time.perf_counter() - t0,
            terms=dict(zip(self._names, bounds.wci_terms(frobs, traces), strict=True)),
            methods={e.name: e.method for e in estimates},
        )
        self.records.append(record)
        if self.csv_path is not None:
            write_atomic(self.csv_path, self.to_csv())
        if self._writer is not None:
            for key in ("wci", "wci_se", "loss_adv", "acc_adv", "sum_frob_sq", "sum_trace"):
                self._writer.add_scalar(f"{self.tag}/{key}", getattr(record, key), record.step)
        if self.on_measure is not None:
            self.on_measure(record)
        return record

    def to_csv(self) -> str:
        """The records as CSV: the scalar fields, then one ``term:<layer>`` column per layer."""
        scalars = [f.name for f in fields(WCIRecord) if f.name not in ("terms", "methods")]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(scalars + [f"term:{n}" for n in self._names])
        for r in self.records:
            writer.writerow(
                [getattr(r, k) for k in scalars] + [r.terms.get(n) for n in self._names]
            )
        return buf.getvalue()

    def close(self) -> None:
        """Flush and close a TensorBoard writer the monitor opened itself."""
        if self._writer is not None and self._owns_writer:
            self._writer.close()

    def __enter__(self) -> WCIMonitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def _owns_writer(self) -> bool:
        return getattr(self._writer, "_wciaudit_owned", False)


def _writer(tensorboard: Any) -> Any:
    if tensorboard is None:
        return None
    if hasattr(tensorboard, "add_scalar"):
        return tensorboard
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "TensorBoard logging needs the tensorboard package: pip install tensorboard"
        ) from None
    writer = SummaryWriter(log_dir=os.fspath(tensorboard))
    writer._wciaudit_owned = True
    return writer


class WCILRAdjuster:
    """EXPERIMENTAL: lower the learning rate when WCI rises above its running minimum.

    After each measurement: if ``wci > threshold * reference`` and at least
    ``cooldown`` measurements passed since the last cut, every parameter group's
    ``lr`` becomes ``max(lr * factor, min_lr)`` and the reference restarts at this WCI;
    else ``reference = min(reference, wci)``. The first measurement after ``warmup``
    sets the reference (early in training WCI grows as the network learns at all).

    A heuristic in the spirit of Xu & Zhang (arXiv 2410.07719), who relate a growing
    WCI to robust overfitting; it is not from the paper and carries no guarantee.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        threshold: relative rise over the running minimum that triggers a cut (> 1).
        factor: multiplier of the learning rate at a cut, in (0, 1).
        cooldown: measurements to wait after a cut before the next one may happen.
        min_lr: the learning rate is never set below this.
        warmup: measurements ignored before the reference is set.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        threshold: float = 1.2,
        factor: float = 0.5,
        cooldown: int = 0,
        min_lr: float = 0.0,
        warmup: int = 0,
    ) -> None:
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 1):
            raise ConfigError(f"threshold must be a number > 1, got {threshold!r}")
        if not (isinstance(factor, (int, float)) and 0 < factor < 1):
            raise ConfigError(f"factor must be in (0, 1), got {factor!r}")
        if isinstance(cooldown, bool) or not isinstance(cooldown, int) or cooldown < 0:
            raise ConfigError(f"cooldown must be an integer >= 0, got {cooldown!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ConfigError(f"warmup must be an integer >= 0, got {warmup!r}")
        if not (isinstance(min_lr, (int, float)) and min_lr >= 0):
            raise ConfigError(f"min_lr must be >= 0, got {min_lr!r}")
        self.optimizer = optimizer
        self.threshold, self.factor, self.cooldown, self.min_lr = (
            float(threshold),
            float(factor),
            cooldown,
            float(min_lr),
        )
        self.warmup = warmup
        self.reference: float | None = None
        self.since_cut = cooldown
        self.cuts: list[int] = []  # measurement indices at which the rate was cut
        self._seen = 0

    def step(self, wci: float) -> bool:
        """Feed one WCI measurement; returns True when the learning rate was cut."""
        index, self._seen = self._seen, self._seen + 1
        if wci is None or not math.isfinite(wci) or index < self.warmup:
            return False
        self.since_cut += 1
        if self.reference is None:
            self.reference = wci
            return False
        if wci > self.threshold * self.reference and self.since_cut > self.cooldown:
            for group in self.optimizer.param_groups:
                group["lr"] = max(group["lr"] * self.factor, self.min_lr)
            self.reference, self.since_cut = wci, 0
            self.cuts.append(index)
            return True
        self.reference = min(self.reference, wci)
        return False

    def __call__(self, record: WCIRecord) -> bool:
        """So that it can be a monitor's ``on_measure``."""
        return self.step(record.wci)

    def state_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "since_cut": self.since_cut,
            "cuts": list(self.cuts),
            "seen": self._seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference, self.since_cut = state["reference"], state["since_cut"]
        self.cuts, self._seen = list(state["cuts"]), state["seen"]
