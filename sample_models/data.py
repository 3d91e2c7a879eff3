"""Digits data set helpers shared by the sample models, their training and their tests."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["DigitsSplit", "accuracy", "load_digits_split"]


@dataclass(frozen=True)
class DigitsSplit:
    """Train/test split of scikit-learn's 8x8 digits as torch tensors.

    Images are float32 shaped ``(N, 1, 8, 8)`` and scaled to ``[0, 1]``; labels are int64.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


@functools.lru_cache(maxsize=8)
def _cached_split(seed: int) -> DigitsSplit:
    """Build (once per seed) the split; callers must only ever see clones of it."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float32) / 16.0
    labels = np.asarray(digits.target, dtype=np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=labels
    )
    return DigitsSplit(
        train_x=torch.from_numpy(np.ascontiguousarray(train_x)).unsqueeze(1),
        train_y=torch.from_numpy(np.ascontiguousarray(train_y)),
        test_x=torch.from_numpy(np.ascontiguousarray(test_x)).unsqueeze(1),
        test_y=torch.from_numpy(np.ascontiguousarray(test_y)),
    )


def load_digits_split(seed: int = 0) -> DigitsSplit:
    """Load the deterministic stratified 80/20 digits split used by every sample model.

    The split comes from scikit-learn's bundled ``load_digits()`` (no network access) and
    ``train_test_split(random_state=seed, stratify=y)``. The result is cached per seed, but
    every call returns fresh clones, so mutating the returned tensors never affects the cache.
    """
    cached = _cached_split(seed)
    return DigitsSplit(
        train_x=cached.train_x.clone(),
        train_y=cached.train_y.clone(),
        test_x=cached.test_x.clone(),
        test_y=cached.test_y.clone(),
    )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Compute a classifier's top-1 accuracy in percent on ``(x, y)``.

    The model is switched to eval mode (and left there) and evaluated under
    ``torch.no_grad()``. Modules produced by ``torch.export`` / PT2E (``ep.module()``,
    ``prepare_pt2e``, ``convert_pt2e``) refuse ``.eval()``; they are evaluated as they are, so
    move them with ``torchao.quantization.pt2e.move_exported_model_to_eval`` beforehand.
    """
    if len(x) == 0:
        raise ValueError("accuracy() needs at least one sample")
    # Exported graph modules raise here: their train/eval switch rewrites the graph instead.
    with contextlib.suppress(NotImplementedError):
        model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size])
            correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    return 100.0 * correct / len(x)
