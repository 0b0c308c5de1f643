"""WCICallback: logs WCI through the LightningModule's loggers during a real fit, changes
nothing the fit does (weights bit for bit, mode, grads, RNG), and the .ckpt it leaves scans."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wciaudit.checkpoints import load_checkpoint
from wciaudit.errors import ConfigError

L = pytest.importorskip("lightning", reason="the lightning extra is not installed")
from wciaudit.integrations import lightning as integration  # noqa: E402
from wciaudit.integrations.lightning import WCICallback  # noqa: E402

NET_SOURCE = """
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    \"\"\"ReLU conv net with BatchNorm and dropout, so that mode flags and RNG matter.\"\"\"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.drop(F.relu(self.bn(self.conv(x))).flatten(1)))
"""
_namespace: dict = {}
exec(NET_SOURCE, _namespace)
Net = _namespace["Net"]


class Lit(L.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = Net()
        self.criterion = nn.CrossEntropyLoss(weight=torch.ones(3))  # a buffer outside .model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.criterion(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def _data(n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _fit(tmp_path, callbacks: list, loggers) -> Lit:
    """Two seeded epochs that draw from torch's global RNG (shuffling, dropout)."""
    torch.manual_seed(0)
    x, y = _data()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True
    )
    lit = Lit()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=loggers,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(lit, loader)
    return lit


def test_fit_logs_through_the_loggers_changes_nothing_and_its_ckpt_scans(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    plain = _fit(tmp_path / "plain", [], False)
    x, y = _data()
    callback = WCICallback(x[:16], y[:16], eps=0.1, steps=2)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), filename="last")
    loggers = [CSVLogger(str(tmp_path / "csv")), TensorBoardLogger(str(tmp_path / "tb"))]
    lit = _fit(tmp_path / "with", [callback, ckpt], loggers)

    # the callback only observed: the same weights bit for bit
    for k, v in plain.state_dict().items():
        assert torch.equal(v, lit.state_dict()[k]), k
    assert [r.step for r in callback.records] == [0, 1]
    last = callback.records[-1]
    assert last.wci > 0 and last.wci_se >= 0

    # the CSV logger's file holds every logged name, with the record's values
    text = (tmp_path / "csv" / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    logged = [r for r in rows if r.get("wci/wci")]
    assert len(logged) == 2
    expected = callback.metrics(last)
    assert set(expected) <= set(logged[-1])
    assert "wci/term/model.conv.weight" in expected and "wci/sum_trace" in expected
    for key, value in expected.items():
        assert float(logged[-1][key]) == pytest.approx(value, rel=1e-6), key
    # and TensorBoard's
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(loggers[1].log_dir)
    events.Reload()
    assert "wci/wci" in events.Tags()["scalars"]
    assert events.Scalars("wci/wci")[-1].value == pytest.approx(last.wci, rel=1e-6)

    # the .ckpt it saved scans as it is: the LightningModule's prefix stripped and said
    arch = tmp_path / "net.py"
    arch.write_text(NET_SOURCE)
    loaded = load_checkpoint(tmp_path / "ckpt" / "last.ckpt", arch=f"{arch}:Net")
    assert loaded.info.format == "lightning"
    assert "'model.'" in loaded.notes[0] and "criterion.weight" in loaded.notes[0]
    for k, v in lit.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    from cli_runner import TINY_SCAN, invoke_in

    g = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x_train=g.random((40, 1, 4, 4)).astype("float32"),
        y_train=g.integers(0, 3, 40),
    )
    args = ["scan", "ckpt/last.ckpt", "--arch", "net.py:Net", "--data", "d.npz", "--eps", "0.1"]
    code, stdout, stderr = invoke_in(tmp_path, [*args, *TINY_SCAN[4:]])
    assert code == 0, stdout + stderr
    out = json.loads((tmp_path / "last.wciaudit.json").read_text())
    assert out["checkpoint"]["format"] == "lightning" and out["wci"] > 0
    assert any("prefix 'model.' stripped" in note for note in out["notes"])


class _Trainer:
    current_epoch = 0
    sanity_checking = False


def test_a_measurement_preserves_mode_grads_weights_and_rng(monkeypatch):
    torch.manual_seed(1)
    lit = Lit()
    x, y = _data()
    lit.train()
    lit.model.bn.eval()  # a mixed state that a blanket train() would not restore
    F.cross_entropy(lit(x), y).backward()
    grads = {n: p.grad.clone() for n, p in lit.named_parameters()}
    state = {k: v.clone() for k, v in lit.state_dict().items()}
    flags = [m.training for m in lit.modules()]
    rng = torch.get_rng_state()
    logged: list[dict] = []
    monkeypatch.setattr(lit, "log_dict", lambda metrics, **kw: logged.append(metrics))
    callback = WCICallback(x, y, module="model", eps=0.1, steps=2, every_n_epochs=2)
    callback.setup(_Trainer(), lit, "fit")
    callback.on_train_epoch_end(_Trainer(), lit)  # epoch 0 of every 2nd: nothing
    assert logged == []
    trainer = _Trainer()
    trainer.current_epoch = 1
    callback.on_train_epoch_end(trainer, lit)
    assert [m.training for m in lit.modules()] == flags
    assert torch.equal(torch.get_rng_state(), rng)
    for n, p in lit.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
    for k, v in lit.state_dict().items():
        assert torch.equal(v, state[k]), k
    # module="model": the layers under the network's own names
    assert logged[0]["wci/wci"] == callback.records[0].wci
    assert "wci/term/conv.weight" in logged[0] and "wci/term/fc.weight" in logged[0]


def test_bad_arguments_and_missing_lightning(monkeypatch):
    x, y = _data()
    with pytest.raises(ConfigError, match="every_n_epochs"):
        WCICallback(x, y, every_n_epochs=0)
    with pytest.raises(ConfigError, match="no sub-module 'backbone'"):
        WCICallback(x, y, module="backbone").setup(_Trainer(), Lit(), "fit")
    with pytest.raises(ConfigError, match="y must hold integer class labels"):
        WCICallback(x, y.float()).setup(_Trainer(), Lit(), "fit")
    # the settings are the monitor's one config, checked when the callback is made
    with pytest.raises(ConfigError, match="tol must be in"):
        WCICallback(x, y, tol=2.0)
    with pytest.raises(ConfigError, match="unknown setting"):
        WCICallback(x, y, tolerance=0.1)
    with pytest.raises(ConfigError, match="pgd or fgsm"):
        WCICallback(x, y, attack="autoattack")
    assert WCICallback(x, y, steps=3).config.steps == 3
    monkeypatch.setattr(integration, "Callback", None)
    with pytest.raises(ConfigError, match=r"wciaudit\[lightning\]"):
        WCICallback(x, y)
