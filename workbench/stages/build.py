"""The whole headless build: capture -> prepare -> calibrate/train -> convert -> export + report.

The app runs the same steps one by one; the CLI's `quantize` runs them all through `build`.
"""

from __future__ import annotations

import itertools
import json
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.analysis.compare import Comparison, compare
from workbench.artifacts.export import (
    SavedModel,
    program_for,
    program_size,
    save_program,
    write_text,
)
from workbench.data.datasets import Dataset, load_data
from workbench.model.capture import CapturedModel
from workbench.model.signature import ModelInputs, prediction_label
from workbench.quantization.recipe import Recipe, check_output
from workbench.stages.steps import (
    QatConfig,
    Stage,
    calibrate,
    call,
    convert,
    evaluate,
    exported_stage,
    prepare,
    train_qat,
    trained_float,
)

Progress = Callable[[str, int, int, dict[str, Any]], None]
QUANT_OPS = ("quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel",
             "dequantize_per_channel")  # fmt: skip


@dataclass(frozen=True)
class BuildResult:
    """What `build` made: every stage, the saved model and the report."""

    stages: dict[str, Stage]
    saved: SavedModel
    report: dict[str, Any] = field(repr=False)


def build(
    captured: CapturedModel,
    recipe: Recipe,
    *,
    data: str,
    out: Path,
    report_path: Path | None = None,
    recipe_path: Path | None = None,
    steps: int | None = None,
    batch_size: int = 64,
    eval_samples: int | None = None,
    lr: float = 1e-4,
    optimizer: str = "adam",
    freeze_bn_step: int | None = None,
    freeze_observer_step: int | None = None,
    progress: Progress | None = None,
) -> BuildResult:
    """Quantize `captured` as `recipe` says and write a reload-checked .pt2 (and a report).

    `steps` is calibration batches (PTQ, default 16) or training steps (QAT, default 120);
    `lr`, `optimizer` and the freeze steps are QAT settings (see QatConfig); `eval_samples`
    limits evaluation to the first samples of the evaluation split.
    Nothing is written at `out` unless every stage succeeded and the reload check passed.
    """
    timings: dict[str, float] = {"capture": captured.export_seconds}
    start = time.perf_counter()
    check_output(recipe, captured.outputs)
    dataset = load_data(data, captured.signature, task=recipe.task())
    if eval_samples is not None:
        dataset = dataset.limited(eval_samples)
    timings["data"] = time.perf_counter() - start
    float_stage = exported_stage(captured)
    prepared = prepare(captured, recipe)
    timings["prepare"] = prepared.seconds
    stages = {"exported": float_stage, "prepared": prepared}

    def report_progress(name: str) -> Callable[[int, int, dict[str, Any]], None] | None:
        if progress is None:
            return None
        return lambda done, total, info: progress(name, done, total, info)

    if recipe.mode == "qat":
        config = QatConfig(
            steps=120 if steps is None else steps, batch_size=batch_size, lr=lr,
            optimizer=optimizer, freeze_bn_step=freeze_bn_step,
            freeze_observer_step=freeze_observer_step,
        )  # fmt: skip
        tuned = train_qat(
            prepared, dataset, config, teacher=float_stage.graph_module,
            progress=report_progress("train"),
        )  # fmt: skip
    else:
        tuned = calibrate(
            prepared, dataset, batches=16 if steps is None else steps, batch_size=batch_size,
            progress=report_progress("calibrate"),
        )  # fmt: skip
    timings[tuned.name] = tuned.seconds
    stages[tuned.name] = tuned
    converted = convert(tuned)
    timings["convert"] = converted.seconds
    stages["converted"] = converted
    if progress is not None:
        progress("export", 0, 1, {})
    result = export_stages(captured, recipe, dataset, stages, out, timings)
    report = result.report
    if report_path is not None:
        write_text(report_path, json.dumps(report, indent=2) + "\n")
    if recipe_path is not None:
        write_text(recipe_path, recipe.to_json())
    if progress is not None:
        progress("export", 1, 1, {})
    return result


def export_stages(
    captured: CapturedModel,
    recipe: Recipe,
    dataset: Dataset,
    stages: dict[str, Stage],
    out: Path,
    timings: dict[str, float] | None = None,
    comparison: Comparison | None = None,
) -> BuildResult:
    """Save the converted stage as a reload-checked .pt2 at `out` and make the report.

    The reload check compares every output leaf on up to four evaluation batches, the
    example inputs and the example resized in its dynamic dims (other than the batch);
    nothing is written at `out` unless it passes. A `comparison` already made of these
    stages on this data goes into the report instead of a new one.
    """
    timings = dict(timings or {})
    converted = stages["converted"]
    start = time.perf_counter()
    program = program_for(converted.graph_module, captured.example_inputs,
                          dims=captured.dynamic_dims, parameters=captured.parameters)  # fmt: skip
    timings["export"] = time.perf_counter() - start
    check = [b.inputs for b in itertools.islice(dataset.eval_batches(128), 4)]
    saved = save_program(
        program,
        out,
        reference=converted.graph_module,
        check_inputs=[*check, captured.example_inputs, *resized_examples(captured)],
        parameters=captured.parameters,
    )
    timings["save"], timings["reload"] = saved.export_seconds, saved.reload_seconds
    report = make_report(captured, recipe, dataset, stages, saved, timings, comparison)
    return BuildResult(stages, saved, report)


def reproduce_command(
    spec: str,
    recipe_file: str,
    mode: str,
    data: str,
    steps: int,
    batch_size: int,
    qat: QatConfig | None = None,
    dynamic: Sequence[object] = (),
    eval_samples: int | None = None,
) -> str:
    """The `python -m workbench quantize` command that rebuilds the same model headless.

    With `qat`, its settings that differ from the CLI's defaults for `steps` are spelled out
    too (a freeze step equal to the default share of the steps is left to the default).
    `dynamic` are the dims the user asked to be dynamic (`INPUT:DIM` as text).
    """
    command = (
        f"python -m workbench quantize --model {shlex.quote(spec)} --recipe {recipe_file} "
        f"--mode {mode} --data {shlex.quote(data)} --steps {steps} --batch-size {batch_size}"
    )
    command += "".join(f" --dynamic {shlex.quote(str(d))}" for d in dynamic)
    if eval_samples is not None:
        command += f" --eval-samples {eval_samples}"
    if qat is not None:
        default = QatConfig(steps=qat.steps)
        if qat.lr != default.lr:
            command += f" --lr {qat.lr!r}"
        if qat.optimizer != default.optimizer:
            command += f" --optimizer {qat.optimizer}"
        if qat.bn_freeze_at != default.bn_freeze_at:
            command += f" --freeze-bn-step {qat.bn_freeze_at}"
        if qat.observer_freeze_at != default.observer_freeze_at:
            command += f" --freeze-observer-step {qat.observer_freeze_at}"
    return command + " --out model.pt2 --report report.json"


def make_report(
    captured: CapturedModel,
    recipe: Recipe,
    dataset: Dataset,
    stages: dict[str, Stage],
    saved: SavedModel,
    timings: dict[str, float],
    comparison: Comparison | None = None,
) -> dict[str, Any]:
    """The JSON report: quality before/after, per-node SQNR, op counts, timings, file sizes."""
    float_gm = stages["exported"].graph_module
    converted = stages["converted"].graph_module
    reference = (
        trained_float(stages["exported"], stages["trained"]) if "trained" in stages else None
    )
    if comparison is None:
        comparison = compare(float_gm, converted, dataset, reference_gm=reference)
    quality: dict[str, Any] = {
        "metric": dataset.quality,
        "data": dataset.spec,
        "eval_samples": dataset.eval_size,
        "float": comparison.float_quality,
        "quantized": comparison.int8_quality,
    }
    if "trained" in stages:
        quality["fake_quant"] = evaluate(stages["trained"].graph_module, dataset, teacher=float_gm)
    errors = comparison.errors
    float_program = program_for(float_gm, captured.example_inputs, dims=captured.dynamic_dims,
                                parameters=captured.parameters)  # fmt: skip
    float_bytes = program_size(float_program)
    return {
        "model": str(captured.spec),
        "recipe": recipe.as_dict(),
        "signature": signature_report(captured, recipe, float_gm),
        "dynamic_dims": [d.as_dict() for d in saved.dynamic_dims],
        "quality": quality,
        "per_node_sqnr_reference": comparison.reference,
        "per_node_sqnr_db": [
            {
                "node": e.node,
                "exported": e.exported,
                "reference": e.reference,
                "sqnr_db": _finite(e.sqnr_db),
                "bn_folded": e.bn_folded,
                "quantized": e.quantized,
            }
            for e in errors
        ],
        "converted_ops": op_counts(converted),
        "overrides_applied": {
            name: {"rule": eff.rule, "setting": eff.setting.fields_set()}
            for name, eff in stages["prepared"].applied.items()
            if eff.rule != "default"
        },
        "stages": {
            name: {
                "created_by": s.created_by,
                "seconds": round(s.seconds, 4),
                "notes": list(s.notes),
            }
            for name, s in stages.items()
        },
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "files": {
            "model": str(saved.path),
            "bytes": saved.bytes,
            "float_bytes": float_bytes,
            "ratio_to_float": round(saved.bytes / float_bytes, 4),
        },
        "reload_check": {
            "batches": saved.batches_checked,
            "max_abs_diff": saved.max_abs_diff,
            "bit_equal": saved.bit_equal,
            "dynamic_batch": saved.dynamic_batch,
            "outputs": [
                {
                    "output": c.output,
                    "shape": list(c.shape),
                    "max_abs_diff": c.max_abs_diff,
                    "bit_equal": c.bit_equal,
                }
                for c in saved.outputs
            ],
        },
        "torch": torch.__version__,
    }


def signature_report(
    captured: CapturedModel, recipe: Recipe, float_gm: torch.fx.GraphModule
) -> dict[str, Any]:
    """The model's inputs (name, shape, dtype), its output leaves and which is the prediction
    (`float_gm`, the exported stage, is called once to see it)."""
    inputs = captured.example_inputs.named_tensors(captured.parameters)
    return {
        "inputs": [
            {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            for name, t in inputs
        ],
        "outputs": list(captured.outputs),
        "prediction": prediction_label(call(float_gm, captured.example_inputs), recipe.output),
        **{k: v for k, v in (("loss", recipe.loss), ("metric", recipe.metric)) if v},
    }


def resized_examples(captured: CapturedModel) -> list[ModelInputs]:
    """The example inputs at another size of each non-batch dynamic dim: twice as long
    (tiled, within the dim's range) or else half as long, so a reload check covers it."""
    variants = []
    names = captured.input_names()
    sizes = [t.shape for t in captured.example_inputs.tensors()]
    for kind in dict.fromkeys(d.name for d in captured.dynamic_dims if d.dim != 0):
        dims = [d for d in captured.dynamic_dims if d.name == kind]
        first = dims[0]
        size = int(sizes[names.index(first.input)][first.dim])
        longer = size * 2 if first.max is None else min(size * 2, first.max)
        target = longer if longer > size else max(first.min, size // 2)
        if target != size:
            wanted = {(names.index(d.input), d.dim) for d in dims}
            variants.append(_resized(captured.example_inputs, wanted, target))
    return variants


def _resized(inputs: ModelInputs, wanted: set[tuple[int, int]], target: int) -> ModelInputs:
    """`inputs` with the (tensor index, dim)s in `wanted` tiled or cut to `target`."""
    counter = iter(range(len(inputs.tensors())))

    def resize(t: torch.Tensor) -> torch.Tensor:
        index = next(counter)
        for i, dim in wanted:
            if i == index:
                tiles = [-(-target // t.shape[dim]) if d == dim else 1 for d in range(t.dim())]
                t = t.repeat(*tiles).narrow(dim, 0, target)
        return t

    return inputs.map(resize)


def op_counts(gm: torch.fx.GraphModule) -> dict[str, int]:
    """How many of each op a graph calls (q/dq ops, batch_norm, conv2d, ...)."""
    from workbench.graph.view import readable_op

    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function":
            name = readable_op(node)
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _finite(value: float) -> float | None:
    return None if value == float("inf") else round(value, 3)
