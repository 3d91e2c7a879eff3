"""Calibration, training and evaluation data named by a data spec: digits, random or a function."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from workbench.errors import WorkbenchError, first_line
from workbench.userfile import import_user_file

QualityKind = Literal["accuracy", "agreement", "mse"]
DATA_FORMS = "digits, random or path/to/file.py:FUNC"
RANDOM_TRAIN, RANDOM_EVAL = 512, 256


class DataError(WorkbenchError):
    """Data that cannot be loaded or does not fit the model."""


@dataclass(frozen=True)
class Dataset:
    """Inputs and targets for training/calibration and for evaluation.

    `targets` are class labels (quality = accuracy), float tensors (quality = mean squared
    error), or None: then the float model's own outputs are the targets and quality means
    agreement with it.
    """

    spec: str
    train_inputs: tuple[torch.Tensor, ...]
    train_targets: torch.Tensor | None
    eval_inputs: tuple[torch.Tensor, ...]
    eval_targets: torch.Tensor | None

    @property
    def quality(self) -> QualityKind:
        if self.train_targets is None:
            return "agreement"
        return "mse" if self.train_targets.is_floating_point() else "accuracy"

    @property
    def train_size(self) -> int:
        return int(self.train_inputs[0].shape[0])

    @property
    def eval_size(self) -> int:
        return int(self.eval_inputs[0].shape[0])

    def train_batches(
        self, batch_size: int, *, seed: int = 0
    ) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]:
        """Shuffled training batches, reshuffled each epoch, forever."""
        generator = torch.Generator().manual_seed(seed)
        size = min(batch_size, self.train_size)  # less data than one batch: all of it
        while True:
            order = torch.randperm(self.train_size, generator=generator)
            for start in range(0, self.train_size - size + 1, size):
                index = order[start : start + size]
                targets = self.train_targets[index] if self.train_targets is not None else None
                yield tuple(t[index] for t in self.train_inputs), targets

    def eval_batches(
        self, batch_size: int = 256
    ) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]:
        for start in range(0, self.eval_size, batch_size):
            end = start + batch_size
            targets = self.eval_targets[start:end] if self.eval_targets is not None else None
            yield tuple(t[start:end] for t in self.eval_inputs), targets


def default_data_spec(example_inputs: tuple[torch.Tensor, ...]) -> str:
    """digits for models taking (N, 1, 8, 8) images, random otherwise."""
    fits = len(example_inputs) == 1 and tuple(example_inputs[0].shape[1:]) == (1, 8, 8)
    return "digits" if fits else "random"


def load_data(spec: str, example_inputs: tuple[torch.Tensor, ...], *, seed: int = 0) -> Dataset:
    """Load the data named by `spec`, checked against the model's example inputs."""
    spec = spec.strip()
    if spec == "digits":
        dataset = _digits(example_inputs)
    elif spec == "random":
        dataset = _random(example_inputs, seed)
    else:
        path, sep, func = spec.rpartition(":")
        if not (sep and path.endswith(".py") and func):
            raise DataError(f"'{spec}' is not a data spec.", f"Use one of: {DATA_FORMS}.")
        dataset = _from_function(spec, Path(path), func)
    check_finite(dataset.train_inputs, f"the {spec} training/calibration inputs")
    check_finite(dataset.eval_inputs, f"the {spec} evaluation inputs")
    _check_fits(dataset, example_inputs)
    return dataset


def check_finite(inputs: tuple[torch.Tensor, ...], what: str) -> None:
    """Raise DataError when any input holds NaN or infinity, saying where."""
    for position, tensor in enumerate(inputs):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = (~torch.isfinite(tensor)).reshape(tensor.shape[0], -1).any(dim=1)
            rows = bad.nonzero().flatten()[:5].tolist()
            raise DataError(
                f"{what} contain NaN or infinite values (input {position}, samples {rows}"
                f"{'…' if int(bad.sum()) > 5 else ''}).",
                "Clean or drop those samples: observers and training cannot use them.",
            )


def _digits(example_inputs: tuple[torch.Tensor, ...]) -> Dataset:
    from sample_models import load_digits_split

    split = load_digits_split()
    if len(example_inputs) != 1 or tuple(example_inputs[0].shape[1:]) != (1, 8, 8):
        shapes = ", ".join(str(tuple(t.shape)) for t in example_inputs)
        raise DataError(
            f"The digits data gives (N, 1, 8, 8) images; this model takes {shapes}.",
            "Use --data random, or a data function path/to/file.py:FUNC yielding "
            "(inputs, targets) batches for this model.",
        )
    return Dataset("digits", (split.train_x,), split.train_y, (split.test_x,), split.test_y)


def _random(example_inputs: tuple[torch.Tensor, ...], seed: int) -> Dataset:
    generator = torch.Generator().manual_seed(seed)

    def draw(count: int) -> tuple[torch.Tensor, ...]:
        out = []
        for t in example_inputs:
            shape = (count, *t.shape[1:])
            if t.is_floating_point():
                low, high = float(t.min()), float(t.max())
                sample = torch.rand(shape, generator=generator, dtype=t.dtype)
                out.append(low + (high - low) * sample if high > low else sample)
            else:
                out.append(t[torch.randint(0, t.shape[0], (count,), generator=generator)])
        return tuple(out)

    return Dataset("random", draw(RANDOM_TRAIN), None, draw(RANDOM_EVAL), None)


def _from_function(spec: str, path: Path, func: str) -> Dataset:
    module = import_user_file(path, prefix="workbench_data_", error=DataError, what="data file")
    try:
        source = getattr(module, func)
        batches = list(source() if callable(source) else source)
    except AttributeError as exc:
        raise DataError(
            f"{path} has no '{func}'.", "Name the data function defined there."
        ) from exc
    except Exception as exc:
        raise DataError(
            f"The data function {spec} failed: {type(exc).__name__}: {first_line(exc)}",
            "Fix it so that it yields (inputs, targets) batches.",
        ) from exc
    inputs, targets = _stack_batches(spec, batches)
    check_finite(inputs, f"the {spec} inputs")  # before splitting: sample numbers are global
    count = int(inputs[0].shape[0])
    # The last 20 % evaluates; a single sample serves both.
    cut = min(count - 1, math.ceil(count * 0.8)) if count > 1 else 1
    eval_start = cut if count > 1 else 0
    return Dataset(
        spec,
        tuple(t[:cut] for t in inputs),
        targets[:cut] if targets is not None else None,
        tuple(t[eval_start:] for t in inputs),
        targets[eval_start:] if targets is not None else None,
    )


def _stack_batches(
    spec: str, batches: list[Any]
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    expected = "an iterable of (inputs, targets) batches, inputs a tensor or tuple of tensors"
    if not batches:
        raise DataError(f"The data function {spec} yielded nothing.", f"Make it yield {expected}.")
    all_inputs: list[tuple[torch.Tensor, ...]] = []
    all_targets: list[torch.Tensor] = []
    for index, batch in enumerate(batches):
        if not (isinstance(batch, tuple | list) and len(batch) == 2):
            raise DataError(
                f"Batch {index} of {spec} is not an (inputs, targets) pair.",
                f"Make it yield {expected}.",
            )
        inputs, target = batch
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        if not all(isinstance(t, torch.Tensor) for t in inputs):
            raise DataError(f"Batch {index} of {spec} has non-tensor inputs.", f"Yield {expected}.")
        all_inputs.append(inputs)
        if target is not None:
            all_targets.append(torch.as_tensor(target))
    if all_targets and len(all_targets) != len(all_inputs):
        raise DataError(f"Some batches of {spec} have targets and some do not.", "Be consistent.")
    try:
        stacked = tuple(torch.cat(parts) for parts in zip(*all_inputs, strict=True))
        targets = torch.cat(all_targets) if all_targets else None
    except (RuntimeError, ValueError) as exc:
        raise DataError(
            f"The batches of {spec} do not stack: {first_line(exc)}",
            "Yield batches with the same number of inputs and the same per-sample shapes.",
        ) from exc
    return stacked, targets


def _check_fits(dataset: Dataset, example_inputs: tuple[torch.Tensor, ...]) -> None:
    got = [tuple(t.shape[1:]) for t in dataset.train_inputs]
    want = [tuple(t.shape[1:]) for t in example_inputs]
    if got != want:
        raise DataError(
            f"The {dataset.spec} data has samples shaped {got}; the model takes {want} "
            "(batch dimension left out).",
            "Use data shaped like the model's example inputs, or --data random.",
        )
