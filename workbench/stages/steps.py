"""The PT2E stages as immutable snapshots: exported, prepared, calibrated/trained, converted.

Every function takes a stage and returns a new one; torchao's passes mutate their input, so
each works on a deep copy and the stage it was given stays as it was.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import GraphModule
from torchao.quantization.pt2e import (
    disable_observer,
    move_exported_model_to_eval,
)
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e

from workbench.data.datasets import Batch, Dataset
from workbench.data.task import Task
from workbench.errors import InputShapeError, WorkbenchError, first_line
from workbench.graph.view import GraphView, describe
from workbench.locks import EXPORT_LOCK
from workbench.model.capture import CapturedModel
from workbench.model.signature import ModelInputs
from workbench.quantization.quantizer import RecipeQuantizer
from workbench.quantization.recipe import Effective, Recipe, validate
from workbench.stages.ranges import RangeRecorder

Progress = Callable[[int, int, dict[str, Any]], None]
StopRequested = Callable[[], bool]


class TrainingError(WorkbenchError):
    """Training could not go on (for example, the loss became NaN)."""


@dataclass(frozen=True)
class Stage:
    """One snapshot of the model: treat `graph_module` as read-only, copy before changing it."""

    name: str
    graph_module: GraphModule
    created_by: str
    seconds: float
    recipe: Recipe | None = None
    applied: dict[str, Effective] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    history: tuple[dict[str, Any], ...] = ()
    ranges: RangeRecorder | None = None

    def view(self) -> GraphView:
        return describe(self.graph_module, stage=self.name)

    def copy_module(self) -> GraphModule:
        return copy.deepcopy(self.graph_module)


@dataclass(frozen=True)
class QatConfig:
    """How to train with fake quantization in the loop."""

    steps: int = 120
    batch_size: int = 64
    lr: float = 1e-4
    optimizer: str = "adam"
    freeze_bn_step: int | None = None  # default: 60 % of the steps
    freeze_observer_step: int | None = None  # default: 80 % of the steps
    eval_every: int = 0  # 0: only at the end
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or not (self.lr > 0):
            raise WorkbenchError(
                f"QAT settings steps={self.steps}, batch_size={self.batch_size}, lr={self.lr} "
                "are out of range.",
                "Use steps >= 0, batch_size >= 1 and a positive learning rate.",
            )
        if self.optimizer not in ("adam", "sgd"):
            raise WorkbenchError(f"Unknown optimizer {self.optimizer!r}.", "Use adam or sgd.")

    @property
    def bn_freeze_at(self) -> int:
        return self.freeze_bn_step if self.freeze_bn_step is not None else int(self.steps * 0.6)

    @property
    def observer_freeze_at(self) -> int:
        step = self.freeze_observer_step
        return step if step is not None else int(self.steps * 0.8)


def exported_stage(captured: CapturedModel) -> Stage:
    """The captured graph as the first stage."""
    return Stage(
        "exported", captured.graph_module(), "torch.export.export", captured.export_seconds
    )


def prepare(captured: CapturedModel, recipe: Recipe) -> Stage:
    """Annotate with the recipe and insert observers (PTQ) or fake quantizers (QAT)."""
    view = describe(captured.graph_module(), stage="exported")
    validate(recipe, view)
    quantizer = RecipeQuantizer(recipe, view)
    start = time.perf_counter()
    gm = captured.graph_module()
    with EXPORT_LOCK:  # torchao exports pattern graphs inside
        if recipe.mode == "qat":
            prepared = prepare_qat_pt2e(gm, quantizer)
            how = f"prepare_qat_pt2e ({recipe.backend})"
        else:
            prepared = prepare_pt2e(gm, quantizer)
            how = f"prepare_pt2e ({recipe.backend})"
    return Stage(
        "prepared", prepared, how, time.perf_counter() - start, recipe, dict(quantizer.applied)
    )


def calibrate(
    stage: Stage,
    data: Dataset,
    *,
    batches: int = 16,
    batch_size: int = 64,
    progress: Progress | None = None,
    should_stop: StopRequested | None = None,
    record_ranges: bool = False,
) -> Stage:
    """Run calibration batches through a copy of a prepared stage so observers record ranges.

    With `record_ranges`, every observer's min/max after each batch is kept in the returned
    stage's `ranges` (qat.RangeRecorder; steps are batch numbers).
    """
    model = stage.copy_module()
    with EXPORT_LOCK:
        move_exported_model_to_eval(model)
    recorder = RangeRecorder(model, batches) if record_ranges else None
    start = time.perf_counter()
    done = 0
    with torch.no_grad():
        for batch in itertools.islice(data.train_batches(batch_size), batches):
            if should_stop is not None and should_stop():
                break
            call(model, batch.inputs)
            done += 1
            if recorder is not None:
                recorder.record(done)
            if progress is not None:
                progress(done, batches, {"stage": "calibrate"})
    notes = () if done == batches else (f"calibration stopped after {done} of {batches} batches",)
    return Stage(
        "calibrated", model,
        f"calibrate: {done} batches {data.batch_text(batch_size)} from {data.spec}",
        time.perf_counter() - start, stage.recipe, stage.applied, notes, (), recorder,
    )  # fmt: skip


def train_qat(
    stage: Stage,
    data: Dataset,
    config: QatConfig,
    *,
    teacher: GraphModule | None = None,
    progress: Progress | None = None,
    should_stop: StopRequested | None = None,
    record_ranges: bool = False,
) -> Stage:
    """Train a copy of a QAT-prepared stage; BN statistics and observers freeze on schedule.

    `teacher` (the float model) supplies targets when the data has none. With
    `record_ranges`, every fake quantizer's scale, zero point and min/max after each step
    are kept in the returned stage's `ranges`. One uninterrupted `runner.QatRun`, evaluating
    every `config.eval_every` steps (0: never).
    """
    from workbench.stages.training import QatRun  # the runner builds on this module

    run = QatRun(stage, data, config, teacher=teacher, record_ranges=record_ranges)
    return run.run(progress=progress, should_stop=should_stop).stage()


def freeze_bn_(model: GraphModule) -> None:
    """Use running BN statistics from now on (aten.batch_norm's `training` argument is 5)."""
    changed = False
    for node in model.graph.nodes:
        if node.target is torch.ops.aten.batch_norm.default and node.args[5] is not False:
            node.args = (*node.args[:5], False, *node.args[6:])
            changed = True
    if changed:
        model.recompile()


def convert(stage: Stage, *, reference: bool = False) -> Stage:
    """Fold BN, replace observers with quantize/dequantize and weights with int tensors."""
    model = stage.copy_module()
    start = time.perf_counter()
    with EXPORT_LOCK:
        move_exported_model_to_eval(model)
        converted = convert_pt2e(model, use_reference_representation=reference, fold_quantize=True)
        move_exported_model_to_eval(converted)
    how = "convert_pt2e" + (" (reference representation)" if reference else "")
    return Stage(
        "converted", converted, how, time.perf_counter() - start, stage.recipe, stage.applied
    )


def trained_float(exported: Stage, trained: Stage) -> GraphModule:
    """The float graph carrying a QAT-trained stage's weights and BatchNorm statistics.

    QAT moves the float weights; comparing the int8 model with this float model measures the
    quantization error alone, without the training drift. Parameters and buffers are matched
    by name and shape (the prepared graph keeps the exported module paths); anything else,
    such as a BN's num_batches_tracked, keeps the exported value.
    """
    model = exported.copy_module()
    own = model.state_dict()
    shared = {
        name: value
        for name, value in trained.graph_module.state_dict().items()
        if name in own and own[name].shape == value.shape
    }
    model.load_state_dict(shared, strict=False)
    return model


def call(model: torch.nn.Module, inputs: ModelInputs) -> Any:
    """Call a captured/prepared/converted module on `inputs` and return its whole output.

    The call holds the process-wide lock (locks.py): results do not depend on other work.
    """
    try:
        with EXPORT_LOCK:
            return inputs.call(model)
    except (RuntimeError, AssertionError, ValueError, TypeError) as exc:
        raise InputShapeError(
            f"The model failed on inputs {inputs.describe()}: {first_line(exc)}",
            "Give data shaped like the model's example inputs.",
        ) from exc


def run(model: torch.nn.Module, inputs: ModelInputs, task: Task | None = None) -> torch.Tensor:
    """Call the model and return its prediction (the task's output leaf)."""
    return (task or Task()).prediction(call(model, inputs))


def evaluate(
    model: torch.nn.Module, data: Dataset, *, teacher: torch.nn.Module | None = None
) -> float:
    """Quality on the evaluation split (workbench.data.task): accuracy % or agreement % with
    `teacher`, MSE, or the user's metric.

    A model with observers is evaluated as a copy with observers off, since observers
    record ranges in eval mode too.
    """
    if isinstance(model, GraphModule) and _has_observers(model):
        model = copy.deepcopy(model)
        model.apply(disable_observer)
    if data.quality == "agreement" and teacher is None:
        raise ValueError("agreement needs the float model as teacher")
    total, count, samples = 0.0, 0, 0
    with torch.no_grad():
        for batch in data.eval_batches():
            out = call(model, batch.inputs)
            reference = call(teacher, batch.inputs) if data.quality == "agreement" else None
            part, parts = data.task.score(out, batch.raw, batch.targets, reference, batch.size)
            total, count, samples = total + part, count + parts, samples + batch.size
    data.counted_eval(samples)
    return Task.finish(total, count, data.quality)


def _loss(
    model: GraphModule, batch: Batch, data: Dataset, teacher: GraphModule | None
) -> torch.Tensor:
    out = call(model, batch.inputs)
    reference = None
    if data.needs_teacher(batch):
        assert teacher is not None
        with torch.no_grad():
            reference = call(teacher, batch.inputs)
    return data.task.loss_value(out, batch.raw, batch.targets, reference)


def _has_observers(model: GraphModule) -> bool:
    return any(n.op == "call_module" and "activation_post_process" in str(n.target)
               for n in model.graph.nodes)  # fmt: skip
