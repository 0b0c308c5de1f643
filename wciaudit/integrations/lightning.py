"""WCI during a Lightning fit: :class:`WCICallback` (``pip install "wciaudit[lightning]"``).

The callback measures the Weight-Curvature Index on a held batch through
:class:`wciaudit.WCIMonitor` at the end of every ``every_n_epochs``-th training epoch and
logs it through the LightningModule's own ``log_dict``, so whatever logger the trainer
has (TensorBoard, CSV, any other) shows it, and ``ModelCheckpoint(monitor="wci/wci")``
can use it. Like the monitor it only observes: the module's train/eval flags, its
parameters and their ``.grad``, torch's global random states and the grad mode are the
same after a measurement as before, so a seeded fit gives the same weights with and
without the callback (tested).

Logged per measurement, with ``prefix`` (default ``"wci"``): ``wci/wci``,
``wci/wci_se``, ``wci/loss_adv``, ``wci/acc_adv``, the ablations ``wci/sum_frob_sq`` and
``wci/sum_trace``, and one ``wci/term/<layer>`` per layer (``log_layers=False`` leaves
those out).

Example (a fit of two epochs; docs/integrations.md has the whole script)::

    from wciaudit.integrations.lightning import WCICallback

    x_held, y_held = next(iter(train_loader))           # inputs in [0, 1], labels
    callback = WCICallback(x_held, y_held, eps=8 / 255, every_n_epochs=1)
    trainer = L.Trainer(max_epochs=2, callbacks=[callback])
    trainer.fit(lit_module, train_loader)
    callback.records[-1].wci, callback.records[-1].wci_se
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import ScanConfig
from ..errors import ConfigError
from ..monitor import WCIMonitor, WCIRecord, monitor_config

try:
    from lightning.pytorch import Callback
except ImportError:  # the class below then refuses to be built, naming the extra
    Callback = None

__all__ = ["WCICallback"]

#: the scalar fields of a record that are logged, beside the per-layer terms
LOGGED = ("wci", "wci_se", "loss_adv", "acc_adv", "sum_frob_sq", "sum_trace")


class WCICallback(Callback if Callback is not None else object):  # type: ignore[misc]
    """Measure WCI on a held batch every ``every_n_epochs`` training epochs and log it.

    Args:
        x, y: the held batch (e.g. 128-512 training examples) in the data range
            [config.lo, config.hi]; moved to the module's device per measurement.
        every_n_epochs: measure after epochs ``every_n_epochs - 1, 2 * every_n_epochs - 1``
            (0-based), as Lightning counts them.
        module: the name of the LightningModule's attribute that maps inputs to logits
            (e.g. ``"model"``), or None for the LightningModule itself (its ``forward``).
        prefix: the logged names start with ``<prefix>/``.
        log_layers: also log one ``<prefix>/term/<layer>`` per layer.
        config: attack and curvature settings, or pass them as keywords (``eps``,
            ``steps``, ``tol``, ``max_probes``, ...): :class:`wciaudit.WCIMonitor`'s.

    Attributes:
        records: every :class:`~wciaudit.monitor.WCIRecord` measured, in order.

    Raises:
        ConfigError: Lightning is not installed (the message names the extra), a
            malformed setting (checked here) or batch (checked when the fit starts,
            against the module), or ``every_n_epochs`` not a positive integer.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        every_n_epochs: int = 1,
        module: str | None = None,
        prefix: str = "wci",
        log_layers: bool = True,
        config: ScanConfig | None = None,
        **settings: Any,
    ) -> None:
        if Callback is None:
            raise ConfigError("WCICallback needs Lightning: pip install 'wciaudit[lightning]'")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int):
            raise ConfigError(f"every_n_epochs must be a positive integer, got {every_n_epochs!r}")
        if every_n_epochs < 1:
            raise ConfigError(f"every_n_epochs must be a positive integer, got {every_n_epochs}")
        self.x, self.y = x, y
        self.every_n_epochs = every_n_epochs
        self.module = module
        self.prefix = prefix
        self.log_layers = log_layers
        # checked now, not when the fit starts
        self.config = monitor_config(config, settings)
        self.records: list[WCIRecord] = []
        self._monitor: WCIMonitor | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Build the monitor on the module (the batch and settings are checked here)."""
        if stage != "fit" or self._monitor is not None:
            return
        target = pl_module if self.module is None else getattr(pl_module, self.module, None)
        if not isinstance(target, torch.nn.Module):
            raise ConfigError(
                f"the LightningModule has no sub-module {self.module!r} to measure; pass "
                "module=None to measure the LightningModule itself"
            )
        self._monitor = WCIMonitor(target, self.x, self.y, config=self.config)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._monitor is None or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if getattr(trainer, "sanity_checking", False):
            return
        record = self._monitor.measure(trainer.current_epoch)
        self.records.append(record)
        pl_module.log_dict(
            self.metrics(record), on_step=False, on_epoch=True, prog_bar=False, logger=True
        )

    def metrics(self, record: WCIRecord) -> dict[str, float]:
        """The logged names and values of one record."""
        out = {f"{self.prefix}/{key}": float(getattr(record, key)) for key in LOGGED}
        if self.log_layers:
            out.update({f"{self.prefix}/term/{k}": float(v) for k, v in record.terms.items()})
        return out
