"""What a model is trained and judged on: its prediction, its QAT loss and its quality.

- The prediction is the output leaf `output` names (signature.prediction).
- Loss: a user's `loss(outputs, batch)` when given; else cross entropy for class labels
  (token labels too: -100 is ignored), mean squared error for float targets, and without
  targets the KL divergence from the float model's prediction (distillation; MSE where the
  prediction has one value per sample, since a softmax over one value is constant).
- Quality: a user's `metric(outputs, batch)` (higher is better, averaged over samples) when
  given; else accuracy % for class labels, mean squared error for float targets, and top-1
  agreement % with the float model without targets.

`outputs` is the model's whole output (a ModelOutput, dict, tuple or tensor) and `batch` the
batch as the data function yielded it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from workbench.errors import WorkbenchError, first_line
from workbench.model.signature import prediction
from workbench.model.userfile import import_user_file, split_file_spec

__all__ = ["IGNORE_INDEX", "QualityKind", "Task", "TaskError"]

QualityKind = Literal["accuracy", "agreement", "mse", "metric"]
IGNORE_INDEX = -100  # labels the loss and accuracy skip (padding), as in transformers


class TaskError(WorkbenchError):
    """A loss or metric function that cannot be loaded or does not work."""


@dataclass(frozen=True)
class Task:
    """The prediction leaf and, optionally, the user's loss and metric (`path.py:FUNC`)."""

    output: str | None = None
    loss: str | None = None
    metric: str | None = None
    _loss_fn: Callable[[Any, Any], torch.Tensor] | None = field(
        default=None, compare=False, repr=False
    )
    _metric_fn: Callable[[Any, Any], Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def load(
        cls, output: str | None = None, loss: str | None = None, metric: str | None = None
    ) -> Task:
        """A task with the user's functions imported (this runs their files' code)."""
        return cls(
            output, loss, metric,
            _user_function(loss, "loss") if loss else None,
            _user_function(metric, "metric") if metric else None,
        )  # fmt: skip

    def prediction(self, outputs: Any) -> torch.Tensor:
        return prediction(outputs, self.output)

    def quality(self, targets: torch.Tensor | None) -> QualityKind:
        """What evaluation measures for data whose targets look like `targets`."""
        if self._metric_fn is not None:
            return "metric"
        if targets is None:
            return "agreement"
        return "mse" if targets.is_floating_point() else "accuracy"

    def loss_value(
        self,
        outputs: Any,
        batch: Any,
        targets: torch.Tensor | None,
        teacher_outputs: Any | None,
    ) -> torch.Tensor:
        """The training loss of one batch (see the module docstring)."""
        if self._loss_fn is not None:
            return _call_user(self._loss_fn, self.loss, outputs, batch, want_tensor=True)
        predicted = self.prediction(outputs)
        if targets is not None and not targets.is_floating_point():
            return F.cross_entropy(*_classes(predicted, targets), ignore_index=IGNORE_INDEX)
        if targets is None:
            if teacher_outputs is None:
                raise ValueError("data without targets needs the float model's outputs")
            reference = self.prediction(teacher_outputs).detach()
            if predicted.dim() < 2 or predicted.shape[-1] == 1:
                return F.mse_loss(predicted, reference.to(predicted.dtype))
            return F.kl_div(
                F.log_softmax(predicted.float(), -1), F.log_softmax(reference.float(), -1),
                log_target=True, reduction="batchmean",
            )  # fmt: skip
        return F.mse_loss(predicted, targets.to(predicted.dtype))

    def score(
        self,
        outputs: Any,
        batch: Any,
        targets: torch.Tensor | None,
        teacher_outputs: Any | None,
        samples: int,
    ) -> tuple[float, int]:
        """(sum, count) of one batch's quality: evaluation divides the totals."""
        if self._metric_fn is not None:
            value = _call_user(self._metric_fn, self.metric, outputs, batch, want_tensor=False)
            return float(value) * samples, samples
        predicted = self.prediction(outputs)
        if targets is not None and not targets.is_floating_point():
            logits, labels = _classes(predicted, targets)
            keep = labels != IGNORE_INDEX
            return float((logits.argmax(-1)[keep] == labels[keep]).sum()), int(keep.sum())
        if targets is not None:
            squared = float(((predicted - targets.to(predicted.dtype)) ** 2).sum())
            return squared, predicted.numel()
        assert teacher_outputs is not None
        reference = self.prediction(teacher_outputs)
        if predicted.dim() == 0:
            return float(predicted == reference), 1
        agree = predicted.argmax(-1) == reference.argmax(-1)
        return float(agree.sum()), agree.numel()

    @staticmethod
    def finish(total: float, count: int, quality: QualityKind) -> float:
        """The quality from summed scores: % for accuracy and agreement, the mean otherwise."""
        if quality in ("accuracy", "agreement"):
            return 100.0 * total / max(count, 1)
        return total / max(count, 1)

    def fields(self) -> dict[str, str]:
        """The settings a recipe and a report record (only those set)."""
        return {k: v for k, v in (("output", self.output), ("loss", self.loss),
                                  ("metric", self.metric)) if v}  # fmt: skip


def _classes(predicted: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (samples, classes) and labels (samples,): token outputs are flattened."""
    labels = targets.long()
    if predicted.dim() == labels.dim() + 1:
        return predicted.reshape(-1, predicted.shape[-1]), labels.reshape(-1)
    raise TaskError(
        f"Class labels of shape {tuple(targets.shape)} do not fit a prediction of shape "
        f"{tuple(predicted.shape)} (it needs one more dim, the classes).",
        "Choose the output that holds the class scores (--output), or give labels per sample "
        "or per token.",
    )


def _user_function(spec: str, kind: str) -> Callable[..., Any]:
    file_spec = split_file_spec(spec)
    if file_spec is None or not file_spec[1]:
        raise TaskError(
            f"'{spec}' does not name a {kind} function.",
            f"Write it as path/to/file.py:FUNC, where FUNC(outputs, batch) returns the {kind}.",
        )
    path, name = file_spec
    module = import_user_file(Path(path), prefix=f"workbench_{kind}_", error=TaskError,
                              what=f"{kind} file")  # fmt: skip
    function = getattr(module, name, None)
    if not callable(function):
        raise TaskError(f"{path} has no function '{name}'.", f"Name the {kind} function there.")
    try:
        inspect.signature(function).bind(None, None)
    except TypeError as exc:
        raise TaskError(
            f"{spec} does not take (outputs, batch): {exc}.",
            f"Define it as def {name}(outputs, batch).",
        ) from exc
    return function


def _call_user(
    function: Callable[..., Any], spec: str | None, outputs: Any, batch: Any, *, want_tensor: bool
) -> Any:
    try:
        value = function(outputs, batch)
    except Exception as exc:
        raise TaskError(
            f"{spec} raised {type(exc).__name__}: {first_line(exc)}",
            "Fix the function; it receives the model's whole output and the batch as the data "
            "function yielded it.",
        ) from exc
    if want_tensor:
        if not (isinstance(value, torch.Tensor) and value.dim() == 0 and value.requires_grad):
            raise TaskError(
                f"{spec} returned {type(value).__name__}"
                f"{f' of shape {tuple(value.shape)}' if isinstance(value, torch.Tensor) else ''}"
                ", not a scalar tensor that depends on the outputs.",
                "Return a 0-dim tensor computed from the outputs (e.g. F.cross_entropy(...)).",
            )
        return value
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise TaskError(
            f"{spec} returned {type(value).__name__}, not a number.",
            "Return a float (higher is better), e.g. the batch's accuracy.",
        ) from exc
