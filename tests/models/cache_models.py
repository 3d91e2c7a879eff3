"""Models whose QAT fusion/folding hits the conv-helper skip in unusual ways."""

from __future__ import annotations

import torch
from torch import nn


class Conv1dBN(nn.Module):
    """Only conv1d: the conv2d and transposed-conv helpers are skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(4 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x.reshape(x.shape[0], 1, 64)))).flatten(1))


class LinearBN(nn.Module):
    """BatchNorm but no conv at all: every conv helper is skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 16)
        self.bn = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.fc(x.flatten(1)))))


def _example() -> tuple[torch.Tensor, ...]:
    return (torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)),)


def conv1d_bn() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return Conv1dBN().eval(), _example()


def linear_bn() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return LinearBN().eval(), _example()
