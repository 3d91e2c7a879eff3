"""Small residual conv-bn-relu CNN for the 8x8 digits, the default PT2E sample model."""

from __future__ import annotations

import torch
from torch import nn

from ._weights import finish_build

NAME = "digits_cnn"
__all__ = ["NAME", "ConvBNReLU", "DigitsCNN", "ResidualBlock", "build"]


class ConvBNReLU(nn.Module):
    """Conv2d + BatchNorm2d + ReLU, the classic fusable/quantizable pattern."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply conv, batch norm and ReLU."""
        return self.relu(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    """Two 3x3 conv-bn layers with an identity shortcut ``+`` add and a final ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``relu(x + bn2(conv2(relu(bn1(conv1(x))))))``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + x)


class DigitsCNN(nn.Module):
    """Digits classifier: stem, residual block, max-pool, conv block, global pool, linear head.

    Input ``(N, 1, 8, 8)`` float images, output ``(N, 10)`` logits.
    """

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvBNReLU(1, width)
        self.block1 = ResidualBlock(width)
        self.pool = nn.MaxPool2d(2)
        self.block2 = ConvBNReLU(width, 2 * width)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(N, 1, 8, 8)`` image batch to ``(N, 10)`` logits."""
        x = self.stem(x)
        x = self.block1(x)
        x = self.pool(x)
        x = self.block2(x)
        x = self.avgpool(x).flatten(1)
        return self.fc(x)


def build(pretrained: bool = True) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Build the digits CNN in eval mode plus a 1-tuple of 4 example test images."""
    return finish_build(DigitsCNN(), NAME, pretrained)
