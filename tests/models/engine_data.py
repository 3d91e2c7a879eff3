"""Data functions for the engine tests, as `path/to/engine_data.py:FUNC` names them.

Each yields 4 batches of 8 digit-like images, (8, 1, 8, 8) in [0, 1], with integer labels:
32 samples, of which load_data keeps the first 26 for training/calibration and the last 6
(samples 26-31) for evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

NAN_SAMPLES = (5, 13)  # samples of nan_batches holding a NaN (both in the training split)
LATE_NAN_SAMPLE = 30  # the sample of late_nan_batches holding a NaN (evaluation split)


def _batches(nan_samples: tuple[int, ...]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    for batch in range(4):
        images = torch.rand(8, 1, 8, 8, generator=generator)
        labels = torch.randint(0, 10, (8,), generator=generator)
        for sample in nan_samples:
            if sample // 8 == batch:
                images[sample % 8, 0, 3, 4] = float("nan")
        yield images, labels


def nan_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Samples 5 and 13 hold one NaN pixel each."""
    return _batches(NAN_SAMPLES)


def late_nan_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Sample 30 (the 5th of the evaluation split) holds one NaN pixel."""
    return _batches((LATE_NAN_SAMPLE,))


def small_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Clean data with fewer training samples (26) than the default batch size (64)."""
    return _batches(())
