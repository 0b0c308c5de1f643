"""Make ``run_digits_cnn/``: a small adversarial-training run that overfits robustly.

    python sample_models/make_run.py            # writes sample_models/run_digits_cnn/
    python sample_models/make_run.py --verbose  # also prints PGD-10 figures every epoch

``DigitsCNN`` (``digits_cnn.py``) is trained with PGD-5 (eps 0.1, Madry) on only 300
examples of the shipped digits train split, so that the robust test loss reaches its
minimum early and then rises while the robust train loss keeps falling: robust
overfitting. The 300 examples are the seeded stratified subset that
``wciaudit.load_data("sample", train_samples=300, seed=0)`` picks, which is also what
``wciaudit track --train-samples 300`` (seed 0) audits, so the audit's S is exactly the
training set.

Checkpoints are saved after the epochs in ``SAVE_EPOCHS`` as
``run_digits_cnn/epoch_<N>.safetensors`` (not zero-padded, so that only a natural sort,
or the ``epoch`` metadata, orders them right), each with the metadata that
``wciaudit scan`` reads: ``arch``, ``arch_args``, ``num_classes``, ``dataset``, ``mean``,
``std``, ``input_size``, ``epoch``, ``training``, ``eps``, ``train_samples``.

Training: Adam, constant learning rate 3e-3, batch 50, 40 epochs; each batch is
replaced by its PGD examples (``ScanConfig(eps=0.1, steps=5, seed=epoch)``) crafted
with the model in eval() mode, the update runs in train() mode. Inputs are raw [0, 1];
the forward normalises them as (x - 0.5) / 0.5. Seeded; CPU, one thread; about 10 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

import wciaudit
from wciaudit.attacks.pgd import perturb
from wciaudit.config import ScanConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits_cnn import DigitsCNN  # noqa: E402

RUN_DIR = HERE / "run_digits_cnn"
EPS = 0.1
TRAIN_SAMPLES = 300
EPOCHS = 40
SAVE_EPOCHS = (1, 3, 6, 10, 15, 20, 30, 40)
BATCH = 50
LR = 3e-3
ARCH_ARGS = {"width": 16, "num_classes": 10}


class Normalized(nn.Module):
    """Raw inputs in [0, 1] -> (x - 0.5) / 0.5 -> the network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 0.5) / 0.5)


def metadata(epoch: int) -> dict[str, str]:
    return {
        "arch": "DigitsCNN",
        "arch_args": json.dumps(ARCH_ARGS),
        "num_classes": "10",
        "dataset": "digits",
        "mean": "[0.5]",
        "std": "[0.5]",
        "input_size": "[1, 8, 8]",
        "epoch": str(epoch),
        "eps": str(EPS),
        "train_samples": str(TRAIN_SAMPLES),
        "training": (
            f"PGD-5 eps={EPS} adversarial training (Madry) on the {TRAIN_SAMPLES}-example "
            f"stratified subset (seed 0) of the digits train split; Adam lr {LR:g} constant, "
            f"batch {BATCH}, {EPOCHS} epochs, 1 CPU thread; this is epoch {epoch}"
        ),
    }


@torch.no_grad()
def _loss_acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    z = model(x)
    return F.cross_entropy(z, y).item(), (z.argmax(1) == y).float().mean().item()


def robust_figures(model: nn.Module, splits: wciaudit.Splits) -> dict[str, float]:
    """PGD-10 (eps 0.1, seed 0) loss and accuracy on both splits, model in eval mode."""
    cfg = ScanConfig(eps=EPS, steps=10, seed=0)
    out = {}
    for split, stream in (("train", 0), ("test", 1)):
        x, y = getattr(splits, f"x_{split}"), getattr(splits, f"y_{split}")
        x_adv = perturb(model, x, y, cfg, stream=stream)
        out[f"loss_{split}"], out[f"acc_{split}"] = _loss_acc(model, x_adv, y)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=RUN_DIR, help="folder to write (default: %(default)s)"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="print PGD-10 figures after every epoch"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)"
    )
    ns = parser.parse_args(argv)
    # a 24k-parameter net on batches of 50 gains nothing from more threads, and on a
    # busy machine extra threads make each step 10-30x slower; the weights depend on it
    torch.set_num_threads(ns.threads)
    ns.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    splits = wciaudit.load_data("sample", train_samples=TRAIN_SAMPLES, seed=0)
    x, y = splits.x_train, splits.y_train
    torch.manual_seed(0)
    net = DigitsCNN(**ARCH_ARGS)
    model = Normalized(net)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(1, EPOCHS + 1):
        order = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], BATCH):
            idx = order[i : i + BATCH]
            model.eval()
            xb = perturb(model, x[idx], y[idx], ScanConfig(eps=EPS, steps=5, seed=epoch), start=i)
            model.train()
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        if ns.verbose or epoch in SAVE_EPOCHS:
            m = robust_figures(model, splits)
            saved = ""
            if epoch in SAVE_EPOCHS:
                path = ns.out / f"epoch_{epoch}.safetensors"
                state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
                safetensors.torch.save_file(state, str(path), metadata=metadata(epoch))
                path.chmod(0o644)
                saved = f"  -> {path.name}"
            print(
                f"epoch {epoch:2d}  PGD-10 robust loss train {m['loss_train']:.3f} test {m['loss_test']:.3f}"
                f" | acc train {m['acc_train']:.3f} test {m['acc_test']:.3f}{saved}",
                flush=True,
            )
    print(
        f"done in {time.perf_counter() - t0:.1f}s (torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
