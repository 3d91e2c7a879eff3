"""Factories of models with many nodes, for the render node-budget tests."""

from __future__ import annotations

import torch
from torch import nn

DEEP_BLOCKS = 100
DEEP_PAIRS = 25  # (Linear, ReLU) pairs per block: 50 layers, 4 graph nodes per pair


def deep_mlp():
    """nn.Sequential of 100 blocks, each an nn.Sequential of 50 layers Linear(4, 4), ReLU.

    10,002 graph nodes: 2,500 x (linear, weight, bias, relu), the input and the output.
    """
    torch.manual_seed(0)
    blocks = [
        nn.Sequential(*[m for _ in range(DEEP_PAIRS) for m in (nn.Linear(4, 4), nn.ReLU())])
        for _ in range(DEEP_BLOCKS)
    ]
    return nn.Sequential(*blocks), (torch.rand(2, 4),)


class FlatChain(nn.Module):
    """No submodules: 150 multiplications straight in forward()."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(150):
            x = x * 1.01
        return x


def flat_chain():
    return FlatChain(), (torch.rand(2, 4),)


class FlatParams(nn.Module):
    """Multiplies by 100 parameters of a ParameterList that is never called.

    Every node is root-level (no nn_module_stack entry): 100 get_attr and 100 mul.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ws = nn.ParameterList([nn.Parameter(torch.ones(4)) for _ in range(100)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for w in self.ws:
            x = x * w
        return x


def flat_params():
    return FlatParams(), (torch.rand(2, 4),)


def many_top_level():
    """60 top-level ReLU modules: more top-level module boxes than a budget of 20."""
    return nn.Sequential(*[nn.ReLU() for _ in range(60)]), (torch.rand(2, 4),)
