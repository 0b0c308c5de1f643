"""DigitsCNN: the custom-architecture sample model (not a timm model).

A small ReLU network for the 1x8x8 digits, piecewise linear in each layer's weights,
so the exact Gauss-Newton route of the curvature measurement applies to every layer.
Audit it with ``--arch sample_models/digits_cnn.py``; the checkpoint
``digits_cnn.safetensors`` names the class (``arch``) and its constructor arguments
(``arch_args``) in its metadata.

Example:
    >>> import torch
    >>> net = DigitsCNN()
    >>> net(torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    >>> sum(p.numel() for p in net.parameters())
    23946
"""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """conv 3x3 (1 -> width, pad 1), ReLU, conv 3x3 stride 2 (width -> 2*width), ReLU,
    flatten, linear -> 64, ReLU, linear -> num_classes. Input (N, 1, 8, 8), already
    normalised; output logits (N, num_classes)."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, kernel_size=3, padding=1),  # 8x8
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, kernel_size=3, stride=2),  # 3x3
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 3 * 3, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
