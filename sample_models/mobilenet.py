"""Tiny MobileNetV2-style network (depthwise-separable convs, inverted residuals) for digits."""

from __future__ import annotations

import torch
from torch import nn

from ._weights import finish_build

NAME = "mobilenet"
__all__ = ["NAME", "ConvBNAct", "DepthwiseSeparable", "InvertedResidual", "TinyMobileNet", "build"]


class ConvBNAct(nn.Module):
    """Conv2d + BatchNorm2d + activation (ReLU6, Hardswish or none)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU6,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_ch,
            out_ch,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply conv, batch norm and the activation."""
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv (groups=channels) followed by a pointwise 1x1 conv, each with BN."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int = 1, act: type[nn.Module] = nn.ReLU6
    ) -> None:
        super().__init__()
        self.depthwise = ConvBNAct(in_ch, in_ch, 3, stride=stride, groups=in_ch, act=act)
        self.pointwise = ConvBNAct(in_ch, out_ch, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the depthwise then the pointwise conv."""
        return self.pointwise(self.depthwise(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, linear 1x1 project, identity skip add.

    Stride 1 and equal in/out channels, so the skip is always applied.
    """

    def __init__(self, channels: int, expand_ratio: int = 2, act: type[nn.Module] = nn.ReLU6):
        super().__init__()
        hidden = channels * expand_ratio
        self.expand = ConvBNAct(channels, hidden, 1, act=act)
        self.depthwise = ConvBNAct(hidden, hidden, 3, groups=hidden, act=act)
        self.project = ConvBNAct(hidden, channels, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x + project(depthwise(expand(x)))``."""
        return x + self.project(self.depthwise(self.expand(x)))


class TinyMobileNet(nn.Module):
    """MobileNetV2-style digits classifier: ``(N, 1, 8, 8)`` images to ``(N, 10)`` logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvBNAct(1, 16, 3, act=nn.ReLU6)
        self.block1 = InvertedResidual(16, expand_ratio=2, act=nn.ReLU6)
        self.down = DepthwiseSeparable(16, 32, stride=2, act=nn.ReLU6)
        self.block2 = InvertedResidual(32, expand_ratio=2, act=nn.Hardswish)
        self.head_conv = ConvBNAct(32, 64, 1, act=nn.Hardswish)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(N, 1, 8, 8)`` image batch to ``(N, 10)`` logits."""
        x = self.stem(x)
        x = self.block1(x)
        x = self.down(x)
        x = self.block2(x)
        x = self.head_conv(x)
        x = self.avgpool(x).flatten(1)
        return self.classifier(x)


def build(pretrained: bool = True) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Build the tiny MobileNet in eval mode plus a 1-tuple of 4 example test images."""
    return finish_build(TinyMobileNet(), NAME, pretrained)
