"""Tiny modules that unit tests build directly (no spec string, no factory)."""

from __future__ import annotations

import torch
from torch import nn


class ConvBN(nn.Module):
    """conv -> BatchNorm2d -> relu on (N, 1, H, W): prepare_pt2e folds the BN into the conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))
