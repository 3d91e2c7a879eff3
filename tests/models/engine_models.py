"""Architectures the engine tests quantize that no sample model has.

Each function is a factory as `path/to/engine_models.py:FUNC` names it: called with no
arguments, it returns (model, example_inputs). Weights come from a fixed seed.
"""

from __future__ import annotations

import torch
from torch import nn


class Conv1dNet(nn.Module):
    """Conv1d + BatchNorm1d + ReLU twice over (N, C, L) sequences, mean over L, linear head."""

    def __init__(self, channels: int = 4, width: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(width)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=-1))


class EncoderNet(nn.Module):
    """nn.TransformerEncoder (batch_first=True) over (N, T, D) tokens, mean pool, linear head."""

    def __init__(self, dim: int = 16, heads: int = 2, layers: int = 1, classes: int = 4) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


def _warm_batch_norm(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Set BN running statistics to those of inputs like `random` data gives (uniform in the
    example's range), so eval and train-mode BN agree, as in a trained model."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average over the warm-up batches
    model.train()
    with torch.no_grad():
        for _ in range(8):
            model(torch.rand((64, *shape), generator=generator) * 5 - 2.5)
    return model.eval()


def conv1d_net() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Conv1d-BN-ReLU network on (N, 4, 16) inputs; example batch of 4."""
    torch.manual_seed(0)
    model = _warm_batch_norm(Conv1dNet(), (4, 16))
    example = torch.rand(4, 4, 16, generator=torch.Generator().manual_seed(2)) * 5 - 2.5
    return model, (example,)


def encoder_net() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """TransformerEncoder network on (N, 6, 16) inputs; example batch of 4."""
    torch.manual_seed(0)
    model = EncoderNet().eval()
    return model, (torch.randn(4, 6, 16, generator=torch.Generator().manual_seed(3)),)
