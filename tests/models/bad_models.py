"""Factories for capture tests: good models with quirks, and bad ones that must fail clearly.

Each function is a factory as `path/to/bad_models.py:FUNC` names it: called with no arguments,
it returns (model, example_inputs), a bare model, or something wrong on purpose.
"""

from __future__ import annotations

import torch
from torch import nn


class DataDependent(nn.Module):
    """Branches on a tensor's value: torch.export cannot trace this into one graph."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # DATA-DEPENDENT-LINE
            return self.fc(x)
        return -x


class FixedBatch(nn.Module):
    """Reshapes with a literal batch size of 4, so the batch dimension cannot be dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(4, 8))


class Mlp(nn.Module):
    """A small well-behaved model: (N, 4) -> (N, 3)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FixedBatchOfOne(nn.Module):
    """Reshapes with a literal batch size of 1; exportable, but only for batch 1."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(1, 8))


# A model instance that outlives the factory call, so a test can mutate it after capture.
SHARED = Mlp()


def shared_mlp():
    return SHARED, (torch.rand(3, 4, generator=torch.Generator().manual_seed(2)),)


def data_dependent():
    return DataDependent(), (torch.ones(3, 4),)


def fixed_batch():
    return FixedBatch(), (torch.ones(4, 2, 4),)


def fixed_batch_of_one():
    return FixedBatchOfOne(), (torch.ones(1, 2, 4),)


def mlp():
    return Mlp(), (torch.rand(5, 4, generator=torch.Generator().manual_seed(1)),)


def mlp_batch_of_one():
    return Mlp(), (torch.rand(1, 4, generator=torch.Generator().manual_seed(1)),)


def bare_linear():
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def returns_int():
    return 42


def tuple_without_module():
    return "not a model", (torch.ones(2, 4),)


def inputs_not_tensors():
    return Mlp(), ([1.0, 2.0, 3.0, 4.0], 5)


def raises():
    raise RuntimeError("factory exploded on purpose")


def _private_helper():
    return None
