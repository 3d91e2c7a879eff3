"""Models and data for the distributed QAT tests (loaded as path/to/file.py:FUNC specs)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import torch
from torch import nn


class DigitsMLP(nn.Module):
    """A BN-free model of the 8x8 digits: flatten -> linear -> relu -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class DigitsConvBN(nn.Module):
    """conv -> BatchNorm2d -> relu -> linear on the 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def mlp() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return DigitsMLP().eval(), (torch.rand(4, 1, 8, 8) * 16,)


def conv_bn() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return DigitsConvBN().eval(), (torch.rand(4, 1, 8, 8) * 16,)


# Training batches rank 1 reads (calibration's included) before it dies.
KILL_AFTER = int(os.environ.get("WORKBENCH_TEST_KILL_AFTER", "30"))
_read = [0]  # training batches read so far by this process (this test file's own state)


def killed_rank(split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Digits-like batches of 8; rank 1 kills itself (SIGKILL) reading its KILL_AFTER-th
    training batch, as a process the machine took away would die (at step 13 of a run that
    calibrates on 2 batches)."""
    generator = torch.Generator().manual_seed(0 if split == "train" else 1)
    for _ in range(20):
        if split == "train" and os.environ.get("RANK") == "1":
            _read[0] += 1
            if _read[0] == KILL_AFTER:
                os.kill(os.getpid(), signal.SIGKILL)
        x = torch.rand(8, 1, 8, 8, generator=generator) * 16
        yield x, torch.randint(0, 10, (8,), generator=generator)
