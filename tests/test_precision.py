"""Full fp32 and deterministic kernels at every public entry point, flags restored.

TF32 and cuDNN's kernel choice are process-wide flags that CPU tensors ignore, so the
flags' values seen inside the model's forward pass show what a GPU would run with.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from reference import traces
from torch import nn

from wciaudit import ScanConfig, WCIMonitor
from wciaudit.attacks import attack_split, perturb, run_attack
from wciaudit.attacks.apgd import apgd_ce, apgd_targeted
from wciaudit.attacks.fab import fab_targeted
from wciaudit.curvature.hutchpp import hutchpp_traces
from wciaudit.curvature.objective import Objective
from wciaudit.model import deterministic_kernels


def _flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


class _Spy(nn.Module):
    """A small classifier that records the TF32 flags at each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(_flags())
        return self.net(x)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 4, 4, generator=g), torch.arange(8) % 3


CFG = ScanConfig(eps=0.1, steps=2, seed=0, batch_size=8)
ENTRY_POINTS = {
    "perturb": lambda m, x, y: perturb(m, x, y, CFG),
    "attack_split": lambda m, x, y: attack_split(m, x, y, CFG, torch.device("cpu")),
    "run_attack": lambda m, x, y: run_attack(m, x, y, CFG),
    "apgd_ce": lambda m, x, y: apgd_ce(m, x, y, eps=0.1, steps=2),
    "apgd_targeted": lambda m, x, y: apgd_targeted(m, x, y, eps=0.1, steps=2, n_target_classes=1),
    "fab_targeted": lambda m, x, y: fab_targeted(
        m, x, y, eps=0.1, norm="linf", steps=2, n_target_classes=1
    ),
    "layer_traces": lambda m, x, y: traces(m, x, y, ["net.1.weight"], max_probes=4),
    "hutchpp_traces": lambda m, x, y: hutchpp_traces(
        Objective(m, x, y, ["net.1.weight"], 8, torch.device("cpu")),
        min_probes=2,
        max_probes=2,
        tol=0.05,
        seed=0,
    ),
    "WCIMonitor.measure": lambda m, x, y: WCIMonitor(m, x, y, eps=0.1, steps=2).measure(),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_tf32_is_off_inside_and_restored_after(entry: str) -> None:
    model = _Spy().eval()
    x, y = _data()
    before = _flags()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        ENTRY_POINTS[entry](model, x, y)
        assert _flags() == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert model.seen and set(model.seen) == {(False, False)}


def test_deterministic_kernels_on_cuda_are_scoped() -> None:
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    # other warnings pass through
    with (
        pytest.warns(UserWarning, match="unrelated"),
        deterministic_kernels(torch.device("cuda", 0)) as found,
    ):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        warnings.warn(
            "adaptive_avg_pool2d_backward_cuda does not have a deterministic "
            "implementation, but you set 'torch.use_deterministic_algorithms("
            "True, warn_only=True)'",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("something unrelated", UserWarning, stacklevel=1)
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before
    assert len(found) == 1 and found[0].startswith("adaptive_avg_pool2d_backward_cuda")


def test_deterministic_kernels_leave_the_cpu_alone() -> None:
    with deterministic_kernels(torch.device("cpu")) as found:
        assert not torch.are_deterministic_algorithms_enabled()
    assert found == []
