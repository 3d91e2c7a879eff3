"""A user's loss and metric for `--loss` / `--metric`, and data functions that count what is read.

`loss(outputs, batch)` and `metric(outputs, batch)` receive the model's whole output (here an
HF `ModelOutput`) and the batch as the data function yielded it (a dict with `labels`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

READ: list[int] = []  # batch numbers counted_batches yielded, in order (tests reset it)


def loss(outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross entropy with label smoothing, on the logits."""
    return F.cross_entropy(outputs.logits, batch["labels"], label_smoothing=0.1)


def metric(outputs: Any, batch: dict[str, torch.Tensor]) -> float:
    """Top-2 accuracy in % (higher is better)."""
    top2 = outputs.logits.topk(2, dim=-1).indices
    return 100.0 * float((top2 == batch["labels"][:, None]).any(-1).float().mean())


def wrong_loss(outputs: Any, batch: Any) -> float:
    """Returns a number, not a tensor: the workbench must say so."""
    return 1.0


def counted_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Twelve batches of 8 digit-like images (no split parameter: every fifth evaluates),
    recording which were read."""
    generator = torch.Generator().manual_seed(0)
    for index in range(12):
        READ.append(index)
        yield (
            torch.rand(8, 1, 8, 8, generator=generator),
            torch.full((8,), index % 10, dtype=torch.long),
        )
