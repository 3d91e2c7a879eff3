"""The JSON report of a build, and the command that rebuilds the same model headless.

`make_report` is what `python -m workbench quantize --report` writes and the app's Export page
offers: quality before and after, per-node SQNR against the float reference, converted op
counts, stage and phase timings, file sizes and the reload check; after QAT, its "qat"
section: the fake-quant quality of the start (the calibrated model, step 0), the best and the
last evaluation, which of them was converted, and whether training ended worse than its start.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch.fx import GraphModule

from workbench.analysis.compare import Comparison, compare, forms_gap
from workbench.artifacts.export import SavedModel, loading_lines, program_for, program_size
from workbench.artifacts.pte import Lowered, PteCheck, SavedPte, pte_loading_lines
from workbench.data.datasets import Dataset
from workbench.graph.nodes import readable_op
from workbench.model.capture import CapturedModel
from workbench.model.signature import ModelInputs, prediction_label
from workbench.quantization.recipe import Recipe
from workbench.stages.stage import Stages
from workbench.stages.steps import call, evaluate
from workbench.stages.training import QatConfig, qat_summary

__all__ = [
    "PteLowering",
    "compare_stages",
    "make_report",
    "op_counts",
    "pte_report",
    "reproduce_command",
    "signature_report",
]


class PteLowering(Protocol):
    """What `pte_report` reads (workbench.stages.build.PteBuild has it)."""

    @property
    def lowered(self) -> Lowered: ...
    @property
    def checked(self) -> PteCheck: ...
    @property
    def float_lowered(self) -> Lowered: ...
    @property
    def float_checked(self) -> PteCheck: ...
    @property
    def saved(self) -> SavedPte | None: ...


def compare_stages(stages: Stages, dataset: Dataset) -> Comparison:
    """The converted model against float on `dataset`: quality of both, and per-node SQNR
    against `stages.float_reference()` (the report's and the app's comparison)."""
    reference = stages.float_reference() if stages.trained else None  # None: "float model"
    return compare(stages.exported.graph_module, stages.converted.graph_module, dataset,
                   reference_gm=reference)  # fmt: skip


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
    qat_keep: str = "best",
) -> str:
    """The `python -m workbench quantize` command that rebuilds the same model headless.

    With `qat`, its settings that differ from the CLI's defaults for `steps` are spelled out
    too (a freeze step equal to the default share of the steps is left to the default), and
    `--qat-keep last` when the last state rather than the best was converted.
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
        if qat_keep != "best":
            command += f" --qat-keep {qat_keep}"
    return command + " --out model.pt2 --report report.json"


def make_report(
    captured: CapturedModel,
    recipe: Recipe,
    dataset: Dataset,
    stages: Stages,
    saved: SavedModel,
    timings: dict[str, float],
    comparison: Comparison | None = None,
) -> dict[str, Any]:
    """The JSON report: quality before/after, per-node SQNR, op counts, timings, file sizes.

    A `comparison` already made of these stages on this data (`compare_stages`) is used
    instead of a new one.
    """
    float_gm = stages.exported.graph_module
    converted = stages.converted.graph_module
    if comparison is None:
        comparison = compare_stages(stages, dataset)
    quality: dict[str, Any] = {
        "metric": dataset.quality,
        "data": dataset.spec,
        "eval_samples": dataset.eval_size,
        "float": comparison.float_quality,
        "quantized": comparison.int8_quality,
    }
    qat = qat_summary(stages.tuned.history) if stages.trained else None
    if stages.trained:
        quality["fake_quant"] = evaluate(stages.tuned.graph_module, dataset, teacher=float_gm)
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
        **({"qat": qat} if qat is not None else {}),
        **(
            {
                "reference_representation": forms_gap(
                    converted, stages.qdq.graph_module, dataset
                ).as_dict()
            }
            if stages.qdq is not None
            else {}
        ),
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
            for name, eff in stages.prepared.applied.items()
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
        # The lines that load the .pt2 in a plain script (torchao must be imported first).
        "load": loading_lines(captured, saved.path.name),
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


def pte_report(
    lowering: PteLowering, saved: SavedModel, example_inputs: ModelInputs
) -> dict[str, Any]:
    """The report's "pte" section: where the converted graph's op nodes run (counts per
    placement, the nodes outside the XNNPACK delegate with their op), sizes of the .pte, the
    .pt2 and the float .pte, the runtime's gap to the converted model (the float .pte's
    to the float model), and the lines that run the file in a plain script ("load").

    `lowering` is anything with `lowered`, `checked`, `float_lowered`, `float_checked` and
    `saved` (`workbench.stages.build.PteBuild`).
    """
    lowered, float_lowered = lowering.lowered, lowering.float_lowered
    written = lowering.saved
    return {
        "file": str(written.path) if written is not None else None,
        "bytes": lowered.bytes,
        "pt2_bytes": saved.bytes,
        "float_pte_bytes": float_lowered.bytes,
        "ratio_to_pt2": round(lowered.bytes / saved.bytes, 4),
        "ratio_to_float_pte": round(lowered.bytes / float_lowered.bytes, 4),
        "delegates": lowered.delegates,
        "placement_counts": lowered.counts,
        "outside_delegate": [n.as_dict() for n in lowered.outside],
        "max_batch": lowered.max_batch,
        "lower_seconds": round(lowered.seconds, 4),
        "check": lowering.checked.as_dict(),
        "load": pte_loading_lines(
            lowered, example_inputs, written.path.name if written is not None else "model.pte"
        ),
        "float": {
            "placement_counts": float_lowered.counts,
            "outside_delegate": [n.as_dict() for n in float_lowered.outside],
            "check": lowering.float_checked.as_dict(),
        },
    }


def signature_report(
    captured: CapturedModel, recipe: Recipe, float_gm: GraphModule
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


def op_counts(gm: GraphModule) -> dict[str, int]:
    """How many of each op a graph calls (q/dq ops, batch_norm, conv2d, ...)."""
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function":
            name = readable_op(node)
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _finite(value: float) -> float | None:
    return None if value == float("inf") else round(value, 3)
