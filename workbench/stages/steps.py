"""The PT2E steps that make each stage from the one before: capture -> prepare -> calibrate ->
convert, and calling or evaluating any stage's module.

Every function takes a stage and returns a new one; torchao's passes mutate their input, so
each works on a deep copy and the stage it was given stays as it was. Training (QAT) builds on
these steps in `workbench.stages.training`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e import (
    disable_observer,
    move_exported_model_to_eval,
    move_exported_model_to_train,
    qat_utils,
)
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e

from workbench.data.datasets import Dataset
from workbench.data.task import Task
from workbench.errors import InputShapeError, first_line
from workbench.graph.nodes import call_arguments, is_batch_norm
from workbench.graph.view import describe
from workbench.locks import EXPORT_LOCK
from workbench.model.capture import CapturedModel
from workbench.model.signature import ModelInputs
from workbench.quantization.quantizer import RecipeQuantizer
from workbench.quantization.recipe import Recipe, validate
from workbench.stages.ranges import RangeRecorder
from workbench.stages.stage import QDQ_STAGE, Stage

__all__ = [
    "QDQ_STAGE",
    "StepProgress",
    "StopRequested",
    "batch_norm_literals",
    "calibrate",
    "call",
    "convert",
    "convert_forms",
    "evaluate",
    "exported_stage",
    "prepare",
    "restore_batch_norm_literals",
    "run",
    "to_eval",
    "to_train",
]

# Told after each unit of work (a calibration batch, a training step, a sensitivity run):
# (units done, units in all, that unit's record, e.g. {"stage": "train", "step", "loss"}).
StepProgress = Callable[[int, int, dict[str, Any]], None]
StopRequested = Callable[[], bool]  # asked before each unit of work; True ends the work there


def exported_stage(captured: CapturedModel) -> Stage:
    """The captured graph as the first stage."""
    return Stage(
        "exported", captured.graph_module(), "torch.export.export", captured.export_seconds
    )


# The (momentum, eps) of each batch_norm of the captured graph, in graph order, kept in a
# prepared module's meta under this key: torchao's QAT conv-bn fusion and its train/eval switches
# rebuild batch_norm calls from pattern graphs carrying the defaults (eps 1e-5, momentum 0.1),
# so a model with eps 1e-3 (transformers' MobileNetV2) trains and converts another model.
_BN_LITERALS = "_workbench_batch_norm_literals"


def batch_norm_literals(gm: GraphModule) -> list[tuple[Any, Any]]:
    """(momentum, eps) of every batch_norm call of `gm`, in graph order."""
    found = []
    for node in gm.graph.nodes:
        if is_batch_norm(node):
            named = call_arguments(node)
            found.append((named.get("momentum"), named.get("eps")))
    return found


def restore_batch_norm_literals(gm: GraphModule) -> int:
    """Put back the captured graph's momentum and eps on each batch_norm call (graph order,
    when the counts match), and the eps of the QAT pattern's sqrt(running_var + eps) that
    scales the weight before its fake quantize; the number of literals changed. Each
    batch_norm node also carries its eps in `meta`, for convert's fold (`convert`)."""
    literals = getattr(gm, "meta", {}).get(_BN_LITERALS)
    nodes = [n for n in gm.graph.nodes if is_batch_norm(n)]
    if not literals or len(literals) != len(nodes):
        return 0
    changed = 0
    for node, values in zip(nodes, literals, strict=True):
        schema = getattr(node.target, "_schema", None)
        if schema is None:
            continue
        node.meta[_BN_EPS] = values[1]
        changed += _restore_running_std_eps(node, values[1])
        names = [a.name for a in schema.arguments]
        args = list(node.args)
        for name, value in zip(("momentum", "eps"), values, strict=True):
            if value is None or name not in names:
                continue
            index = names.index(name)
            if index < len(args) and args[index] != value:
                args[index] = value
                changed += 1
            elif index >= len(args) and node.kwargs.get(name, value) != value:
                node.kwargs = {**node.kwargs, name: value}
                changed += 1
        node.args = tuple(args)
    if changed:
        gm.recompile()
    return changed


_BN_EPS = "workbench_batch_norm_eps"  # node.meta key: the model's eps of a batch_norm


def _restore_running_std_eps(bn: Node, eps: Any) -> int:
    """In torchao's QAT conv-bn pattern, sqrt(running_var + 1e-5) scales the weight before its
    fake quantize: give that add the model's eps too."""
    running_var = call_arguments(bn).get("running_var")
    if not isinstance(running_var, Node) or not isinstance(eps, float):
        return 0
    changed = 0
    for user in list(running_var.users):
        if user.target is torch.ops.aten.add.Tensor and len(user.args) == 2 and isinstance(
            user.args[1], float) and user.args[1] != eps:  # fmt: skip
            user.args = (user.args[0], eps)
            changed += 1
    return changed


@contextlib.contextmanager
def _fold_with_the_models_eps() -> Iterator[None]:
    """convert_pt2e folds each QAT conv-bn with a batch_norm node from its replacement
    pattern, whose eps is 1e-5 whatever the model's; the node carries the original's meta,
    so the model's eps (`_BN_EPS`) is set on it just before torchao folds it."""
    original = qat_utils.fold_bn_weights_into_conv_node

    def fold(conv_node: Node, conv_weight: Node, conv_bias: Node | None, bn_node: Node,
             m: GraphModule) -> None:  # fmt: skip
        eps = bn_node.meta.get(_BN_EPS)
        schema = getattr(bn_node.target, "_schema", None)
        if isinstance(eps, float) and schema is not None:
            names = [a.name for a in schema.arguments]
            args = list(bn_node.args)
            if "eps" in names and names.index("eps") < len(args):
                args[names.index("eps")] = eps
                bn_node.args = tuple(args)
        original(conv_node, conv_weight, conv_bias, bn_node, m)

    qat_utils.fold_bn_weights_into_conv_node = fold
    try:
        yield
    finally:
        qat_utils.fold_bn_weights_into_conv_node = original


def to_eval(model: GraphModule) -> None:
    """torchao's move_exported_model_to_eval, the captured batch_norm literals kept."""
    move_exported_model_to_eval(model)
    restore_batch_norm_literals(model)


def to_train(model: GraphModule) -> None:
    """torchao's move_exported_model_to_train, the captured batch_norm literals kept."""
    move_exported_model_to_train(model)
    restore_batch_norm_literals(model)


def prepare(captured: CapturedModel, recipe: Recipe) -> Stage:
    """Annotate with the recipe and insert observers (PTQ) or fake quantizers (QAT).

    The captured batch_norm literals (momentum, eps) are restored after prepare and after
    every train/eval switch (`to_train`, `to_eval`), which torchao resets to its defaults."""
    view = describe(captured.graph_module(), stage="exported")
    validate(recipe, view)
    quantizer = RecipeQuantizer(recipe, view)
    start = time.perf_counter()
    gm = captured.graph_module()
    literals = batch_norm_literals(gm)
    with EXPORT_LOCK:  # torchao exports pattern graphs inside
        if recipe.mode == "qat":
            prepared = prepare_qat_pt2e(gm, quantizer)
            how = f"prepare_qat_pt2e ({recipe.backend})"
        else:
            prepared = prepare_pt2e(gm, quantizer)
            how = f"prepare_pt2e ({recipe.backend})"
    prepared.meta[_BN_LITERALS] = literals  # GraphModule.meta survives deepcopy
    restore_batch_norm_literals(prepared)
    return Stage(
        "prepared", prepared, how, time.perf_counter() - start, recipe, dict(quantizer.applied)
    )


def calibrate(
    stage: Stage,
    data: Dataset,
    *,
    batches: int = 16,
    batch_size: int = 64,
    progress: StepProgress | None = None,
    should_stop: StopRequested | None = None,
    record_ranges: bool = False,
) -> Stage:
    """Run calibration batches through a copy of a prepared stage so observers record ranges.

    With `record_ranges`, every observer's min/max after each batch is kept in the returned
    stage's `ranges` (a RangeRecorder whose steps are batch numbers).
    """
    model = stage.copy_module()
    with EXPORT_LOCK:
        to_eval(model)
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


def convert(stage: Stage, *, reference: bool | None = None) -> Stage:
    """Fold BN, replace observers with quantize/dequantize and weights with int tensors.

    `reference` (default: the stage's recipe's `reference_representation`) rewrites the
    quantized patterns to torchao's reference representation: integer arithmetic in aten ops.
    """
    if reference is None:
        reference = stage.recipe is not None and stage.recipe.reference_representation
    model = stage.copy_module()
    start = time.perf_counter()
    with EXPORT_LOCK:
        to_eval(model)
        with _fold_with_the_models_eps():
            converted = convert_pt2e(
                model, use_reference_representation=reference, fold_quantize=True
            )
        to_eval(converted)
    how = "convert_pt2e" + (" (reference representation)" if reference else "")
    return Stage(
        "converted", converted, how, time.perf_counter() - start, stage.recipe, stage.applied
    )


def convert_forms(stage: Stage, *, reference: bool | None = None) -> tuple[Stage, Stage | None]:
    """The converted stage in the reference representation or not (`reference`, default: the
    stage's recipe's choice) and, for the reference representation, the q/dq form beside it
    (named QDQ_STAGE), so the two can be compared; else (converted, None)."""
    if reference is None:
        reference = stage.recipe is not None and stage.recipe.reference_representation
    converted = convert(stage, reference=reference)
    if not reference:
        return converted, None
    qdq = convert(stage, reference=False)
    return converted, dataclasses.replace(qdq, name=QDQ_STAGE)


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


def _has_observers(model: GraphModule) -> bool:
    return any(n.op == "call_module" and "activation_post_process" in str(n.target)
               for n in model.graph.nodes)  # fmt: skip
