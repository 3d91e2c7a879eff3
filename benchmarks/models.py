"""Models for the browser benchmarks, as `benchmarks/models.py:FUNC` specs the Model page loads.

`resnet50` is an HF ResNet-50 built from its config (random weights, nothing downloaded);
`deep_stack` is a synthetic model whose exported graph has about 5,000 nodes in many small
modules. Each returns (model, example_inputs).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn


def resnet50() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """An HF ResNet-50 image classifier (bottleneck blocks 3-4-6-3), 1x3x224x224 input."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], embedding_size=64,
        layer_type="bottleneck", num_labels=1000,
    )  # fmt: skip
    model = ResNetForImageClassification(config).eval()
    return model, (torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)),)


class _Cell(nn.Module):
    """Linear, LayerNorm, ReLU and a residual add: 5 graph nodes with its parameters."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.fc(x))


class _Stage(nn.Sequential):
    pass


def deep_stack(nodes: int = 5000) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """Stages of small residual cells, sized so the exported graph has about `nodes` nodes."""
    cells = max(1, nodes // 5)
    per_stage = 25
    stages = [
        _Stage(*[_Cell(8) for _ in range(min(per_stage, cells - start))])
        for start in range(0, cells, per_stage)
    ]
    torch.manual_seed(0)
    return nn.Sequential(*stages).eval(), (torch.rand(2, 8),)


def deep_stack_600() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """`deep_stack` at about 600 nodes: big enough to open collapsed, quick to lay out."""
    return deep_stack(600)
