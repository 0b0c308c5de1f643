"""The curvature objective: L_adv(w; S) = mean cross-entropy on fixed adversarial examples.

SPEC (Adversarial loss): the PGD examples are computed at w and then held fixed
(Danskin), so the Hessian is that of the plain mean cross-entropy on them. Weights are
never modified: the layers are swapped for detached copies through
``torch.func.functional_call`` (tied weights stay tied: one tensor, one layer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


@dataclass
class Objective:
    """Model, fixed examples and the layers whose diagonal Hessian blocks we measure.

    Attributes:
        model: classifier in eval mode (on ``device``, in ``dtype``).
        x: adversarial inputs (N, ...) on the CPU; moved per batch.
        y: labels (N,).
        names: parameter names of the layers, as in ``model.named_parameters()``.
        batch_size: examples per forward pass.
        device: where the model lives.
        n_total: examples over all processes (default: this process's, ``len(x)``);
            the loss is the mean over all of them.
        reduce: sums a CPU tensor over processes (identity in one process).
        n_population: size N of the split the examples were sampled from (None: the
            examples are the whole split, so subset sampling adds no error).
        offset: index of this process's first example among all processes' examples
            (the shards are consecutive in rank order; 0 in one process). The caller
            knows it from the split it made.
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    names: list[str]
    batch_size: int
    device: torch.device
    n_total: int | None = None
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    n_population: int | None = None
    offset: int = 0

    @property
    def n(self) -> int:
        """Examples the mean runs over (all processes)."""
        return int(self.x.shape[0]) if self.n_total is None else self.n_total

    @property
    def n_local(self) -> int:
        return int(self.x.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.model.parameters())).dtype

    def weights(self, requires_grad: bool = True) -> dict[str, torch.Tensor]:
        """Detached copies of the layers (sharing storage; the model is not touched)."""
        params = dict(self.model.named_parameters())
        return {n: params[n].detach().requires_grad_(requires_grad) for n in self.names}

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) per batch of this process's examples, on the model's device."""
        for i in range(0, self.n_local, self.batch_size):
            xb = self.x[i : i + self.batch_size].to(self.device, self.dtype)
            yb = self.y[i : i + self.batch_size].to(self.device)
            yield xb, yb

    def logits(self, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, weights, (x,))

    def loss(
        self, weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Sum of cross-entropies over the batch divided by N (batch share of the mean)."""
        return F.cross_entropy(self.logits(weights, x), y, reduction="sum") / self.n
