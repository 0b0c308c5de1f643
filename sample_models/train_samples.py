"""Regenerate the sample models in this folder from the shipped digits data.

    python sample_models/train_samples.py            # all four models
    python sample_models/train_samples.py --only cnn # one of: resnet_clean, resnet_pgd, vit, cnn

Writes, next to this script:
    digits_resnet_clean.safetensors  timm test_resnet, clean training
    digits_resnet_pgd.safetensors    timm test_resnet, PGD-7 eps=0.1 adversarial training
    digits_vit/                      timm test_vit, clean training, timm checkpoint folder
                                     (config.json + model.safetensors)
    digits_cnn.safetensors           DigitsCNN from digits_cnn.py, clean training

Inputs are 1x8x8 in [0, 1]; every model sees (x - 0.5) / 0.5, and the checkpoints say so
(safetensors metadata mean/std, or config.json pretrained_cfg) so an audit normalises the
same way. Everything is seeded; runs on the CPU. After training, each model is reported
with clean and PGD-10 eps=0.1 accuracy on the train and test splits, and reloaded from
disk to check that the file gives the same logits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from torch import nn

import wciaudit
from wciaudit.attacks.pgd import perturb
from wciaudit.config import ScanConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits_cnn import DigitsCNN  # noqa: E402

DATA = Path(wciaudit.__file__).resolve().parent / "samples" / "digits.npz"
MEAN, STD = 0.5, 0.5
EPS = 0.1
EVAL_CFG = ScanConfig(eps=EPS, steps=10, seed=0)  # the audit's PGD-10 at the sample eps
BATCH = 64
NAMES = ("resnet_clean", "resnet_pgd", "vit", "cnn")


class Normalized(nn.Module):
    """Takes raw inputs in [0, 1], applies (x - mean) / std, then the network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - MEAN) / STD)


def load_digits() -> dict[str, torch.Tensor]:
    with np.load(DATA) as d:
        return {k: torch.from_numpy(d[k]) for k in ("x_train", "y_train", "x_test", "y_test")}


def train(
    net: nn.Module,
    data: dict[str, torch.Tensor],
    *,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    pgd_steps: int = 0,
    seed: int = 0,
) -> None:
    """AdamW with a cosine schedule on mini-batches of the train split.

    pgd_steps > 0: Madry adversarial training; each batch is replaced by its PGD examples
    (eps 0.1, ScanConfig seed = epoch), crafted with the model in eval() mode; the update
    runs in train() mode. The radius ramps up linearly over the first quarter of training.
    """
    model = Normalized(net)
    x, y = data["x_train"], data["y_train"]
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (n + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    warm = max(1, epochs // 4)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, BATCH):
            idx = order[i : i + BATCH]
            xb, yb = x[idx], y[idx]
            if pgd_steps:
                eps = EPS * min(1.0, (epoch + 1) / warm)
                cfg = ScanConfig(eps=eps, steps=pgd_steps, seed=epoch)
                model.eval()
                xb = perturb(model, xb, yb, cfg, start=i, stream=0)
            model.train()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


@torch.no_grad()
def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def evaluate(net: nn.Module, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """Clean and PGD-10 (eps 0.1, seed 0) accuracy on both splits, model in eval mode."""
    model = Normalized(net).eval()
    out = {}
    for split, stream in (("train", 0), ("test", 1)):
        x, y = data[f"x_{split}"], data[f"y_{split}"]
        x_adv = torch.cat(
            [
                perturb(model, x[i : i + 256], y[i : i + 256], EVAL_CFG, start=i, stream=stream)
                for i in range(0, x.shape[0], 256)
            ]
        )
        out[f"clean_{split}"] = _acc(model, x, y)
        out[f"robust_{split}"] = _acc(model, x_adv, y)
    return out


def _metadata(arch: str, arch_args: dict, training: str) -> dict[str, str]:
    return {
        "arch": arch,
        "arch_args": json.dumps(arch_args),
        "num_classes": "10",
        "dataset": "digits",
        "mean": json.dumps([MEAN]),
        "std": json.dumps([STD]),
        "input_size": "[1, 8, 8]",
        "training": training,
        "eps": str(EPS),
    }


def _save_safetensors(net: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    state = {
        k: v.detach().to(torch.float32).contiguous()
        if v.is_floating_point()
        else v.detach().contiguous()
        for k, v in net.state_dict().items()
    }
    safetensors.torch.save_file(state, str(path), metadata=metadata)
    path.chmod(0o644)


def _check_same_logits(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        la, lb = Normalized(a).eval()(x), Normalized(b).eval()(x)
    if not torch.equal(la, lb):
        raise RuntimeError(
            f"reloaded model differs: max |dlogit| {(la - lb).abs().max().item():.3g}"
        )


def make_resnet(data: dict[str, torch.Tensor], pgd: bool) -> nn.Module:
    torch.manual_seed(1 if pgd else 0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1)
    if pgd:
        epochs, lr, steps = 30, 2e-3, 7
        desc = (
            f"PGD-{steps} eps={EPS} adversarial training (Madry; eps ramped over the first "
            f"{max(1, epochs // 4)} epochs), AdamW lr {lr:g} one-cycle, wd 1e-4, "
            f"{epochs} epochs, batch {BATCH}"
        )
    else:
        epochs, lr, steps = 30, 2e-3, 0
        desc = f"clean, AdamW lr {lr:g} one-cycle, wd 1e-4, {epochs} epochs, batch {BATCH}"
    train(net, data, epochs=epochs, lr=lr, weight_decay=1e-4, pgd_steps=steps, seed=0)
    path = HERE / f"digits_resnet_{'pgd' if pgd else 'clean'}.safetensors"
    _save_safetensors(net, path, _metadata("test_resnet", {"in_chans": 1}, desc))
    back = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1)
    back.load_state_dict(safetensors.torch.load_file(str(path)), strict=True)
    _check_same_logits(net, back, data["x_test"])
    return net


def make_vit(data: dict[str, torch.Tensor]) -> nn.Module:
    torch.manual_seed(2)
    args = {"in_chans": 1, "img_size": 8, "patch_size": 2, "num_classes": 10}
    net = timm.create_model("test_vit", pretrained=False, **args)
    epochs, lr, wd = 60, 2e-3, 0.05
    train(net, data, epochs=epochs, lr=lr, weight_decay=wd, seed=0)
    folder = HERE / "digits_vit"
    desc = f"clean, AdamW lr {lr:g} one-cycle, wd {wd:g}, {epochs} epochs, batch {BATCH}"
    timm.models.save_for_hf(
        net,
        str(folder),
        model_config={"dataset": "digits", "training": desc},
        model_args=args,
        safe_serialization=True,
        data_config={"input_size": (1, 8, 8), "mean": (MEAN,), "std": (STD,)},
    )
    # make the preprocessing explicit whatever timm's resolver did with it
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["pretrained_cfg"].update({"input_size": [1, 8, 8], "mean": [MEAN], "std": [STD]})
    for key in ("tag", "license"):  # inherited from timm's ImageNet test weights; not ours
        cfg["pretrained_cfg"].pop(key, None)
    cfg["dataset"] = "digits"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    (folder / "model.safetensors").chmod(0o644)
    back = timm.create_model("local-dir:" + str(folder), pretrained=True)
    _check_same_logits(net, back, data["x_test"])
    return net


def make_cnn(data: dict[str, torch.Tensor]) -> nn.Module:
    torch.manual_seed(3)
    args = {"width": 16, "num_classes": 10}
    net = DigitsCNN(**args)
    epochs, lr = 40, 3e-3
    train(net, data, epochs=epochs, lr=lr, weight_decay=1e-4, seed=0)
    desc = f"clean, AdamW lr {lr:g} one-cycle, wd 1e-4, {epochs} epochs, batch {BATCH}"
    path = HERE / "digits_cnn.safetensors"
    _save_safetensors(net, path, _metadata("DigitsCNN", args, desc))
    back = DigitsCNN(**args)
    back.load_state_dict(safetensors.torch.load_file(str(path)), strict=True)
    _check_same_logits(net, back, data["x_test"])
    return net


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=NAMES, help="train just this model")
    ns = parser.parse_args(argv)
    data = load_digits()
    makers = {
        "resnet_clean": lambda: make_resnet(data, pgd=False),
        "resnet_pgd": lambda: make_resnet(data, pgd=True),
        "vit": lambda: make_vit(data),
        "cnn": lambda: make_cnn(data),
    }
    t_all = time.perf_counter()
    for name in [ns.only] if ns.only else NAMES:
        t0 = time.perf_counter()
        net = makers[name]()
        took = time.perf_counter() - t0
        m = evaluate(net, data)
        print(
            f"{name:13s} clean train {m['clean_train']:.3f} test {m['clean_test']:.3f} | "
            f"PGD-10 eps={EPS} robust train {m['robust_train']:.3f} test {m['robust_test']:.3f} "
            f"| trained in {took:.1f}s",
            flush=True,
        )
    print(
        f"total {time.perf_counter() - t_all:.1f}s (torch {torch.__version__}, "
        f"timm {timm.__version__}, {torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
