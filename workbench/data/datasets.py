"""Calibration, training and evaluation data named by a data spec: digits, random or a function.

- `digits`: scikit-learn's bundled 8x8 digits, for models taking (N, 1, 8, 8) images.
- `random`: inputs like the example inputs, in their value ranges: floats uniform between the
  example's min and max, integers (token ids) uniform between theirs, 0/1 masks as padding
  masks (ones, then zeros). No targets: quality is agreement with the float model.
- `path/to/file.py:FUNC`: FUNC returns an iterable of batches, read as a stream: nothing
  holds the whole set, calibration and training pull only the batches they use. A FUNC that
  takes a parameter is called as FUNC("train") and FUNC("eval") for the two splits; one that
  takes none is split by batch: every fifth batch (the 5th, 10th, ...) evaluates, and a
  source of fewer than five batches evaluates on its last one (a single batch serves both).
  FUNC is called again for every pass, so a generator function restarts. A batch is
  `(inputs, targets)` (inputs a tensor, a tuple of positional inputs or a dict by parameter
  name; targets a tensor or None), or a dict keyed by the forward's parameter names with the
  target under `labels`, `label`, `targets` or `target`. Its own batch size is kept.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.data.task import QualityKind, Task
from workbench.errors import WorkbenchError, describe_value, first_line
from workbench.model.signature import InputSignature, ModelInputs, SignatureError, bind
from workbench.model.userfile import import_user_file, split_file_spec

__all__ = [
    "DATA_FORMS",
    "EVAL_EVERY",
    "RANDOM_EVAL",
    "RANDOM_TRAIN",
    "Batch",
    "DataError",
    "Dataset",
    "StreamDataset",
    "TensorDataset",
    "bind_batch",
    "check_finite",
    "default_data_spec",
    "load_data",
    "random_like",
]

DATA_FORMS = "digits, random or path/to/file.py:FUNC"
RANDOM_TRAIN, RANDOM_EVAL = 512, 256
EVAL_EVERY = 5  # a FUNC without splits: every fifth batch evaluates


class DataError(WorkbenchError):
    """Data that cannot be loaded or does not fit the model."""


@dataclass(frozen=True)
class Batch:
    """One batch as the model takes it, its targets and the batch as the source yielded it."""

    inputs: ModelInputs
    targets: torch.Tensor | None
    raw: Any

    @property
    def size(self) -> int:
        return self.inputs.batch_size or 1


class Dataset:
    """Batches for calibration/training and for evaluation, and how quality is measured.

    `train_batches` runs forever (passes repeat); `eval_batches` is one pass over the
    evaluation split.
    """

    def __init__(self, spec: str, task: Task, quality: QualityKind, has_targets: bool) -> None:
        self.spec = spec
        self.task = task
        self.quality: QualityKind = quality
        self.has_targets = has_targets
        self._eval_size: int | None = None
        self.eval_limit: int | None = None  # evaluate on about this many samples at most

    def train_batches(self, batch_size: int, *, seed: int = 0) -> Iterator[Batch]:
        raise NotImplementedError

    def eval_batches(self, batch_size: int = 256) -> Iterator[Batch]:
        raise NotImplementedError

    @property
    def streamed(self) -> bool:
        """True when batches come from the user's iterable, as it yields them."""
        return False

    @property
    def train_size(self) -> int | None:
        """Training samples, when known without reading the stream."""
        return None

    def batch_text(self, batch_size: int) -> str:
        """How big the batches of a run are, for stage descriptions."""
        return "as the data function yields them" if self.streamed else f"of {batch_size}"

    @property
    def eval_size(self) -> int | None:
        """Evaluation samples: known for tensors, counted by the first full pass otherwise."""
        return self._eval_size

    def counted_eval(self, samples: int) -> None:
        """Record the size of a completed evaluation pass."""
        self._eval_size = samples

    def with_task(self, task: Task) -> Dataset:
        """The same batches judged by another task (another output, loss or metric)."""
        raise NotImplementedError

    def limited(self, samples: int | None) -> Dataset:
        """The same data evaluated on its first `samples` evaluation samples (None: all).

        Tensor data stops at exactly that many; a stream at the end of the batch that
        reaches it.
        """
        dataset = self.with_task(self.task)
        dataset.eval_limit = samples
        dataset._eval_size = self._limited_size(samples)
        return dataset

    def _limited_size(self, samples: int | None) -> int | None:
        return None

    @property
    def identity(self) -> str:
        """The data and how much of it evaluation reads: what results depend on."""
        return self.spec if self.eval_limit is None else f"{self.spec} (eval {self.eval_limit})"

    def needs_teacher(self, batch: Batch | None = None) -> bool:
        """Whether training needs the float model's outputs (no targets, no loss of the
        user's) and evaluation does (agreement)."""
        if self.quality == "agreement":
            return True
        no_targets = batch.targets is None if batch is not None else not self.has_targets
        return no_targets and self.task.loss is None

    def describe(self) -> str:
        train = "?" if self.train_size is None else f"{self.train_size:,}"
        evaluation = "?" if self.eval_size is None else f"{self.eval_size:,}"
        how = " (streamed; the function's own batches)" if self.streamed else ""
        return f"{train} training and {evaluation} evaluation samples{how}"


class TensorDataset(Dataset):
    """Data held as tensors (digits, random): shuffled batches of a chosen size."""

    def __init__(
        self,
        spec: str,
        task: Task,
        train: ModelInputs,
        train_targets: torch.Tensor | None,
        evaluation: ModelInputs,
        eval_targets: torch.Tensor | None,
    ) -> None:
        super().__init__(spec, task, task.quality(train_targets), train_targets is not None)
        self.train_inputs, self.train_targets = train, train_targets
        self.eval_inputs, self.eval_targets = evaluation, eval_targets
        self._eval_size = evaluation.batch_size

    @property
    def train_size(self) -> int:
        return self.train_inputs.batch_size or 0

    def train_batches(self, batch_size: int, *, seed: int = 0) -> Iterator[Batch]:
        """Shuffled training batches, reshuffled each epoch, forever."""
        generator = torch.Generator().manual_seed(seed)
        size = min(batch_size, self.train_size)  # less data than one batch: all of it
        while True:
            order = torch.randperm(self.train_size, generator=generator)
            for start in range(0, self.train_size - size + 1, size):
                index = order[start : start + size]
                yield self._batch(self.train_inputs, self.train_targets, index)

    def eval_batches(self, batch_size: int = 256) -> Iterator[Batch]:
        for start in range(0, self.eval_size or 0, batch_size):
            end = min(start + batch_size, self.eval_size or 0)
            yield self._batch(self.eval_inputs, self.eval_targets, slice(start, end))

    @staticmethod
    def _batch(
        inputs: ModelInputs, targets: torch.Tensor | None, rows: torch.Tensor | slice
    ) -> Batch:
        chosen = inputs.batched(lambda t: t[rows])
        target = targets[rows] if targets is not None else None
        return Batch(chosen, target, (chosen, target))

    def with_task(self, task: Task) -> Dataset:
        dataset = TensorDataset(self.spec, task, self.train_inputs, self.train_targets,
                                self.eval_inputs, self.eval_targets)  # fmt: skip
        dataset.eval_limit = self.eval_limit
        dataset._eval_size = self._eval_size
        return dataset

    def _limited_size(self, samples: int | None) -> int | None:
        whole = self.eval_inputs.batch_size or 0
        return whole if samples is None else min(whole, samples)


class StreamDataset(Dataset):
    """Batches read from a user's iterable, pass by pass, bound to the model's signature."""

    def __init__(
        self,
        spec: str,
        task: Task,
        split: Callable[[str], Iterable[Any]],
        signature: InputSignature,
        quality: QualityKind,
        has_targets: bool = True,
    ) -> None:
        super().__init__(spec, task, quality, has_targets)
        self._split = split
        self._signature = signature

    @property
    def streamed(self) -> bool:
        return True

    def train_batches(self, batch_size: int = 0, *, seed: int = 0) -> Iterator[Batch]:
        """The training split's batches as the source yields them, pass after pass."""
        del batch_size, seed  # the source's own batches and order
        for epoch in itertools.count():
            count = 0
            for index, raw in enumerate(self._split("train")):
                yield self._bound(raw, f"training batch {index}")
                count += 1
            if count == 0:
                raise DataError(
                    f"The data function {self.spec} gave no training batches"
                    f"{' on pass ' + str(epoch + 1) if epoch else ''}.",
                    "Make it yield batches every time it is called (a DataLoader, or a "
                    "generator function).",
                )

    def eval_batches(self, batch_size: int = 0) -> Iterator[Batch]:
        del batch_size
        samples = 0
        for index, raw in enumerate(self._split("eval")):
            if self.eval_limit is not None and samples >= self.eval_limit:
                return
            batch = self._bound(raw, f"evaluation batch {index}")
            samples += batch.size
            yield batch

    def with_task(self, task: Task) -> Dataset:
        quality = task.quality(self.first().targets) if task != self.task else self.quality
        dataset = StreamDataset(
            self.spec, task, self._split, self._signature, quality, self.has_targets
        )
        dataset._eval_size, dataset.eval_limit = self._eval_size, self.eval_limit
        return dataset

    def first(self) -> Batch:
        """The first training batch (checks that the source yields any)."""
        batch = next(iter(self._split("train")), None)
        if batch is None:
            raise DataError(
                f"The data function {self.spec} yielded nothing.",
                "Make it yield (inputs, targets) batches, or dicts keyed by the forward's "
                "parameter names.",
            )
        return self._bound(batch, "training batch 0")

    def _bound(self, raw: Any, where: str) -> Batch:
        return bind_batch(raw, self._signature, f"{where} of {self.spec}")


def bind_batch(raw: Any, signature: InputSignature, where: str) -> Batch:
    """A raw batch as a checked Batch: bound to the signature, finite, shaped like the example."""
    if isinstance(raw, dict):
        value, target = raw, None
    elif isinstance(raw, tuple | list) and len(raw) == 2:
        value, target = raw
    else:
        raise DataError(
            f"{where} is {describe_value(raw)}, not an (inputs, targets) pair or a dict.",
            "Yield (inputs, targets) pairs, or dicts keyed by the forward's parameter names "
            "with the target under 'labels'.",
        )
    try:
        bound = bind(value, signature.example, signature.parameters, where=where)
    except SignatureError as exc:
        raise DataError(exc.problem, exc.fix) from exc
    targets = bound.target if target is None else target
    if targets is not None:
        try:
            targets = torch.as_tensor(targets)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DataError(
                f"The targets of {where} are not a tensor: {first_line(exc)}",
                "Give targets as a tensor (class labels or values), or None.",
            ) from exc
    non_tensors = [
        name
        for name, v in _named_values(bound.inputs, signature)
        if not isinstance(v, torch.Tensor)
    ]
    if non_tensors:
        raise DataError(f"{where} has non-tensor inputs: {', '.join(non_tensors)}.",
                        "Yield tensors for every input of the model.")  # fmt: skip
    check_finite(bound.inputs, f"the inputs of {where}", signature.parameters)
    _check_fits(bound.inputs, signature, where)
    return Batch(bound.inputs, targets, raw)


def _named_values(inputs: ModelInputs, signature: InputSignature) -> list[tuple[str, Any]]:
    slots = list(signature.parameters[: len(inputs.args)])
    return list(zip(slots, inputs.args, strict=False)) + list(inputs.kwargs.items())


def default_data_spec(example: ModelInputs) -> str:
    """digits for models taking (N, 1, 8, 8) images, random otherwise."""
    tensors = example.tensors()
    fits = len(tensors) == 1 and not example.kwargs and tuple(tensors[0].shape[1:]) == (1, 8, 8)
    return "digits" if fits else "random"


def load_data(
    spec: str, signature: InputSignature, *, task: Task | None = None, seed: int = 0
) -> Dataset:
    """Load the data named by `spec`, checked against the model's signature."""
    task = task or Task()
    spec = spec.strip()
    if spec == "digits":
        return _digits(signature, task)
    if spec == "random":
        return _random(signature, task, seed)
    file_spec = split_file_spec(spec)
    if file_spec is None or not file_spec[1]:
        raise DataError(f"'{spec}' is not a data spec.", f"Use one of: {DATA_FORMS}.")
    path, func = file_spec
    return _from_function(spec, Path(path), func, signature, task)


def check_finite(inputs: ModelInputs, what: str, parameters: tuple[str, ...] = ()) -> None:
    """Raise DataError when any input holds NaN or infinity, saying where."""
    for name, tensor in inputs.named_tensors(parameters):
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        low, high = torch.aminmax(tensor)  # NaN and infinities reach these: ~10x cheaper
        if not (bool(torch.isfinite(low)) and bool(torch.isfinite(high))):
            rows = tensor.reshape(tensor.shape[0], -1) if tensor.dim() else tensor.reshape(1, 1)
            bad = (~torch.isfinite(rows)).any(dim=1)
            samples = bad.nonzero().flatten()[:5].tolist()
            raise DataError(
                f"{what} contain NaN or infinite values ({name}, samples {samples}"
                f"{'…' if int(bad.sum()) > 5 else ''}).",
                "Clean or drop those samples: observers and training cannot use them.",
            )


def _digits(signature: InputSignature, task: Task) -> Dataset:
    from sample_models import load_digits_split

    if default_data_spec(signature.example) != "digits":
        raise DataError(
            "The digits data gives (N, 1, 8, 8) images; this model takes "
            f"{signature.example.describe(signature.parameters)}.",
            "Use --data random, or a data function path/to/file.py:FUNC yielding "
            "(inputs, targets) batches for this model.",
        )
    split = load_digits_split()
    return TensorDataset("digits", task, ModelInputs((split.train_x,)), split.train_y,
                         ModelInputs((split.test_x,)), split.test_y)  # fmt: skip


def _random(signature: InputSignature, task: Task, seed: int) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    example = signature.example
    batch = example.batch_size

    def draw(count: int) -> ModelInputs:
        def sample(t: torch.Tensor) -> torch.Tensor:
            if t.dim() == 0 or t.shape[0] != batch:
                return t
            return random_like(t, count, generator)

        return example.map(sample)

    train, evaluation = draw(RANDOM_TRAIN), draw(RANDOM_EVAL)
    check_finite(train, "the random inputs", signature.parameters)
    return TensorDataset("random", task, train, None, evaluation, None)


def random_like(t: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` samples shaped like `t`'s, in its value range (see the module docstring)."""
    shape = (count, *t.shape[1:])
    if t.is_floating_point():
        low, high = float(t.min()), float(t.max())
        sample = torch.rand(shape, generator=generator, dtype=t.dtype)
        return low + (high - low) * sample if high > low else sample
    if t.numel() == 0:
        return t.new_zeros(shape)
    low, high = int(t.min()), int(t.max())
    if t.dtype == torch.bool or ((low, high) == (0, 1) and t.dim() >= 2):
        # A padding mask: each sample keeps a random number (at least one) of leading ones.
        length = t.shape[-1]
        keep = torch.randint(1, length + 1, (count, *t.shape[1:-1], 1), generator=generator)
        return (torch.arange(length) < keep).to(t.dtype)
    return torch.randint(low, high + 1, shape, generator=generator, dtype=t.dtype)


def _from_function(
    spec: str, path: Path, func: str, signature: InputSignature, task: Task
) -> Dataset:
    module = import_user_file(path, prefix="workbench_data_", error=DataError, what="data file")
    if not hasattr(module, func):
        raise DataError(f"{path} has no '{func}'.", "Name the data function defined there.")
    split = _splitter(spec, getattr(module, func))
    dataset = StreamDataset(spec, task, split, signature, "agreement", has_targets=False)
    first = dataset.first()  # checks the first batch now, and tells what the targets are
    dataset.quality, dataset.has_targets = task.quality(first.targets), first.targets is not None
    return dataset


def _splitter(spec: str, source: Any) -> Callable[[str], Iterable[Any]]:
    """split("train" | "eval") -> a fresh iterable of raw batches (see the module docstring)."""

    def opened(*args: str) -> Iterable[Any]:
        try:
            value = source(*args) if callable(source) else source
            iterator = iter(value)
        except Exception as exc:
            raise DataError(
                f"The data function {spec} failed: {type(exc).__name__}: {first_line(exc)}",
                "Fix it so that it returns an iterable of batches.",
            ) from exc
        if not callable(source) and iterator is value:
            raise DataError(
                f"{spec} is a one-shot iterator: it cannot be read a second time.",
                "Make it a function (a generator function, or one returning a DataLoader): "
                "it is called again for every pass.",
            )
        return _guarded(spec, iterator)

    if callable(source) and _takes_a_split(source):
        return opened
    return lambda part: _every_fifth(opened(), part == "eval")


def _takes_a_split(function: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind in positional or p.kind == p.VAR_POSITIONAL for p in parameters)


def _guarded(spec: str, iterator: Iterator[Any]) -> Iterator[Any]:
    """The source's batches; an exception while reading one becomes a DataError."""
    index = 0
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            raise DataError(
                f"Reading batch {index} of {spec} failed: {type(exc).__name__}: {first_line(exc)}",
                "Fix the data function (its DataLoader or file reading).",
            ) from exc
        yield batch
        index += 1


def _every_fifth(batches: Iterable[Any], evaluation: bool) -> Iterator[Any]:
    """Batches 4, 9, 14, ... evaluate, the others train; under five batches, the last
    evaluates (and a single batch does both). At most four batches are held back."""
    held: list[Any] = []
    for index, batch in enumerate(batches):
        if index < EVAL_EVERY - 1:
            held.append(batch)  # until the fifth arrives, any of these may be the last
            continue
        if index == EVAL_EVERY - 1 and not evaluation:
            yield from held
        held = []
        if (index % EVAL_EVERY == EVAL_EVERY - 1) == evaluation:
            yield batch
    if held:  # fewer than five batches
        if evaluation:
            yield held[-1]
        else:
            yield from held[:-1] if len(held) > 1 else held


def _check_fits(inputs: ModelInputs, signature: InputSignature, where: str) -> None:
    got = inputs.named_tensors(signature.parameters)
    want = signature.example.named_tensors(signature.parameters)
    problems = []
    for (name, tensor), (_, example) in zip(got, want, strict=False):
        if tensor.dim() != example.dim():
            problems.append(f"{name} has {tensor.dim()} dims, the model takes {example.dim()}")
            continue
        if tensor.is_floating_point() != example.is_floating_point():
            kind = "floating-point" if example.is_floating_point() else "integer"
            problems.append(f"{name} is {tensor.dtype}, the model takes {kind} values")
        for dim, (size, expected) in enumerate(zip(tensor.shape, example.shape, strict=True)):
            if (name, dim) not in signature.dynamic:
                if size != expected:
                    problems.append(f"{name} has {size} in dim {dim}, the model was captured "
                                    f"for {expected} only")  # fmt: skip
                continue
            top = signature.dynamic[name, dim]
            if top is not None and size > top:
                problems.append(f"{name} has {size} in dim {dim}, the model takes at most {top}")
    if len(got) != len(want):
        problems.append(f"{len(got)} input tensors, the model takes {len(want)}")
    if problems:
        raise DataError(
            f"{where} does not fit the model: {'; '.join(problems)}.",
            "Use data shaped like the model's example inputs "
            f"({signature.example.describe(signature.parameters)}), or --data random; a dim "
            "that should vary must be captured dynamic (--dynamic NAME:DIM).",
        )
