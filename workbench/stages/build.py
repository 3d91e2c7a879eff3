"""The whole headless build: capture -> prepare -> calibrate/train -> convert -> export + report.

`quantize` runs the stages in memory and returns them as `Stages`; `export_stages` saves the
converted one as a reload-checked .pt2 and makes the report; `lower_stages` lowers the
converted and the float stage to ExecuTorch .pte programs and checks both in the runtime; the
CLI's `quantize` runs them through `build`. The app runs the same steps one by one, as jobs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.analysis.compare import Comparison
from workbench.artifacts.export import SavedModel, program_for, save_program, write_text
from workbench.artifacts.pte import (
    Lowered,
    LoweringError,
    PteCheck,
    SavedPte,
    check,
    lower,
    save_pte,
)
from workbench.artifacts.report import compare_stages, make_report, pte_report
from workbench.data.datasets import Dataset, load_data
from workbench.model.capture import CapturedModel
from workbench.model.signature import ModelInputs
from workbench.quantization.recipe import Recipe, check_output
from workbench.stages.distributed import (
    DistributedContext,
    RankData,
    local_context,
    train_qat_distributed,
)
from workbench.stages.stage import Stages
from workbench.stages.steps import StepProgress, calibrate, convert_forms, exported_stage, prepare
from workbench.stages.training import QatConfig, train_qat

__all__ = [
    "BuildProgress",
    "BuildResult",
    "PteBuild",
    "build",
    "export_pte",
    "export_stages",
    "lower_stages",
    "quantize",
    "resized_examples",
]

# Told as the build goes: (phase: "calibrate", "train" or "export", done, total, record); the
# phase's own StepProgress with the phase's name in front.
BuildProgress = Callable[[str, int, int, dict[str, Any]], None]


@dataclass(frozen=True)
class PteBuild:
    """The converted and the float stage lowered to .pte and checked in the ExecuTorch
    runtime (int8 against the converted model, float against the float model)."""

    lowered: Lowered
    checked: PteCheck
    float_lowered: Lowered
    float_checked: PteCheck
    saved: SavedPte | None = None


@dataclass(frozen=True)
class BuildResult:
    """What `build` made: every stage, the saved model and the report (and, for a .pte,
    the lowering)."""

    stages: Stages
    saved: SavedModel
    report: dict[str, Any] = field(repr=False)
    pte: PteBuild | None = None
    comparison: Comparison | None = field(default=None, repr=False)  # the report's numbers


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
    qat_keep: str = "best",
    progress: BuildProgress | None = None,
    device: str = "cpu",
    distributed: DistributedContext | None = None,
    checkpoint_dir: Path | None = None,
) -> BuildResult | None:
    """Quantize `captured` as `recipe` says and write a reload-checked .pt2 (and a report).

    When `out` ends in .pte, the converted program is lowered to ExecuTorch with XNNPACK,
    run and compared in the runtime, and written there instead; the .pt2 is written beside
    it (same name, .pt2), since the report's reload check and sizes are about it and the app
    and `inspect` read it. Lowering failures raise LoweringError before anything is written.
    `steps` is calibration batches (PTQ, default 16) or training steps (QAT, default 120);
    `lr`, `optimizer` and the freeze steps are QAT settings (see QatConfig); `qat_keep` is
    which QAT state is converted: "best" (the best evaluated, the calibrated start included)
    or "last"; `eval_samples` limits evaluation to the first samples of the evaluation split.
    Nothing is written at `out` unless every stage succeeded and the reload check passed.

    `device` (resolved: "cpu" or "cuda") is where calibration, training and evaluation run;
    convert and export run on the CPU. Under torchrun, `distributed` is this rank's place:
    every rank trains (`workbench.stages.distributed`), rank 0 alone converts and writes,
    and the others return None. With `checkpoint_dir`, QAT writes a resumable checkpoint
    there every 10 steps. The report says "device" and, distributed, "distributed".
    """
    context = distributed
    if context is None and (device != "cpu" or checkpoint_dir is not None):
        context = local_context(device)
    timings: dict[str, float] = {"capture": captured.export_seconds}
    start = time.perf_counter()
    check_output(recipe, captured.outputs)
    dataset = load_data(data, captured.signature, task=recipe.task())
    if eval_samples is not None:
        dataset = dataset.limited(eval_samples)
    timings["data"] = time.perf_counter() - start
    if recipe.mode == "qat":
        qat = QatConfig(
            steps=120 if steps is None else steps, batch_size=batch_size, lr=lr,
            optimizer=optimizer, freeze_bn_step=freeze_bn_step,
            freeze_observer_step=freeze_observer_step,
        )  # fmt: skip
        if context is not None and not context.is_main:  # trains beside rank 0, writes nothing
            train_qat_distributed(prepare(captured, recipe), dataset, qat, context=context,
                                  teacher=captured.graph_module(),
                                  checkpoint_dir=checkpoint_dir)  # fmt: skip
            return None
        stages = quantize(captured, recipe, dataset, qat=qat, qat_keep=qat_keep,
                          progress=progress, context=context, checkpoint_dir=checkpoint_dir,
                          checkpoint_meta=_checkpoint_meta(captured, recipe, dataset))  # fmt: skip
    else:
        stages = quantize(captured, recipe, dataset, batches=16 if steps is None else steps,
                          batch_size=batch_size, progress=progress, context=context)  # fmt: skip
    for phase, stage in (("prepare", stages.prepared), (stages.tuned.name, stages.tuned),
                         ("convert", stages.converted)):  # fmt: skip
        timings[phase] = stage.seconds
    if progress is not None:
        progress("export", 0, 1, {})
    out = Path(out)
    if out.suffix == ".pte":
        result = export_pte(captured, recipe, dataset, stages, out, timings)
    else:
        result = export_stages(captured, recipe, dataset, stages, out, timings)
    report = {**result.report, "device": context.device if context is not None else "cpu"}
    if distributed is not None:
        report["distributed"] = distributed.as_report()
    result = dataclasses.replace(result, report=report)
    if report_path is not None:
        write_text(report_path, json.dumps(report, indent=2) + "\n")
    if recipe_path is not None:
        write_text(recipe_path, recipe.to_json())
    if progress is not None:
        progress("export", 1, 1, {})
    return result


def quantize(
    captured: CapturedModel,
    recipe: Recipe,
    data: Dataset,
    *,
    batches: int = 16,
    batch_size: int = 64,
    qat: QatConfig | None = None,
    qat_keep: str = "best",
    progress: BuildProgress | None = None,
    context: DistributedContext | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_meta: dict[str, str | int | float] | None = None,
) -> Stages:
    """exported -> prepared -> calibrated (PTQ) or trained (QAT) -> converted, in memory.

    The recipe's mode decides: PTQ calibrates `batches` batches of `batch_size`, QAT trains
    as `qat` says (default `QatConfig(batch_size=batch_size)`), with the exported graph as
    teacher for data without targets, and keeps its best evaluated state (or, with
    `qat_keep="last"`, the last). With `context`, QAT trains as this rank of a distributed
    run (or on its device) and calibration runs on its device; the tuned stage is on the CPU.
    """
    exported = exported_stage(captured)
    prepared = prepare(captured, recipe)

    def phase(name: str) -> StepProgress | None:
        if progress is None:
            return None
        return lambda done, total, info: progress(name, done, total, info)

    if recipe.mode == "qat":
        config = qat if qat is not None else QatConfig(batch_size=batch_size)
        if context is not None:
            tuned = train_qat_distributed(prepared, data, config, context=context,
                                          teacher=exported.graph_module, keep=qat_keep,
                                          progress=phase("train"), checkpoint_dir=checkpoint_dir,
                                          meta=checkpoint_meta)  # fmt: skip
        else:
            tuned = train_qat(prepared, data, config, teacher=exported.graph_module,
                              progress=phase("train"), keep=qat_keep)  # fmt: skip
    elif context is not None and context.device != "cpu":
        on_device = prepared.copy_module().to(context.device)
        tuned = calibrate(dataclasses.replace(prepared, graph_module=on_device),
                          RankData(data, device=context.device), batches=batches,
                          batch_size=batch_size, progress=phase("calibrate"))  # fmt: skip
        tuned = dataclasses.replace(tuned, graph_module=tuned.graph_module.to("cpu"))
    else:
        tuned = calibrate(prepared, data, batches=batches, batch_size=batch_size,
                          progress=phase("calibrate"))  # fmt: skip
    return Stages(exported, prepared, tuned, *convert_forms(tuned))


def export_stages(
    captured: CapturedModel,
    recipe: Recipe,
    dataset: Dataset,
    stages: Stages,
    out: Path,
    timings: dict[str, float] | None = None,
    comparison: Comparison | None = None,
) -> BuildResult:
    """Save the converted stage as a reload-checked .pt2 at `out` and make the report.

    The reload check compares every output leaf on up to four evaluation batches, the
    example inputs and the example resized in its dynamic dims (other than the batch);
    nothing is written at `out` unless it passes. A `comparison` already made of these
    stages on this data (`report.compare_stages`) goes into the report instead of a new one.
    """
    timings = dict(timings or {})
    converted = stages.converted
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
    if comparison is None:
        comparison = compare_stages(stages, dataset)
    report = make_report(captured, recipe, dataset, stages, saved, timings, comparison)
    return BuildResult(stages, saved, report, comparison=comparison)


def export_pte(
    captured: CapturedModel,
    recipe: Recipe,
    dataset: Dataset,
    stages: Stages,
    out: Path,
    timings: dict[str, float] | None = None,
    *,
    exported: BuildResult | None = None,
    comparison: Comparison | None = None,
) -> BuildResult:
    """Lower the stages (`lower_stages`), write the checked .pte at `out` and the .pt2 beside
    it (same name, .pt2: the report's reload check and sizes are about it, and the app and
    `inspect` read it), with the report's "pte" section.

    `exported`, a .pt2 build of these very stages, is used instead of a new one. Lowering
    fails (LoweringError) before anything is written; the .pte is written atomically.
    """
    timings = dict(timings or {})
    lowering = lower_stages(captured, recipe, dataset, stages, timings)
    result = exported or export_stages(captured, recipe, dataset, stages,
                                       out.with_suffix(".pt2"), timings, comparison)  # fmt: skip
    start = time.perf_counter()
    saved_pte = save_pte(lowering.lowered, out, checked=lowering.checked,
                         example_inputs=captured.example_inputs)  # fmt: skip
    lowering = dataclasses.replace(lowering, saved=saved_pte)
    report = dict(result.report)
    report["timings_s"] = dict(report["timings_s"])
    for name in ("lower", "lower_float", "check_pte", "check_pte_float"):
        report["timings_s"][name] = round(timings[name], 4)
    report["timings_s"]["save_pte"] = round(time.perf_counter() - start, 4)
    report["pte"] = pte_report(lowering, result.saved, captured.example_inputs)
    return dataclasses.replace(result, report=report, pte=lowering)


def lower_stages(
    captured: CapturedModel,
    recipe: Recipe,
    dataset: Dataset,
    stages: Stages,
    timings: dict[str, float] | None = None,
) -> PteBuild:
    """Lower the converted and the float (exported) stage to .pte with XNNPACK and check
    each in the ExecuTorch runtime against its own model, on up to four evaluation batches
    of 128 and the example inputs. Adds "lower", "lower_float" and "check_pte" to `timings`.

    Raises LoweringError (a WorkbenchError) naming the nodes that stop the lowering, and for
    a recipe of another backend than xnnpack: its quantization is not XNNPACK's (x86_inductor's
    uint8 activations), so XNNPACK leaves its q/dq to slow portable kernels.
    """
    timings = timings if timings is not None else {}
    made = {}
    for key, stage, what in (("", stages.converted, "the converted model"),
                             ("_float", stages.exported, "the float model")):  # fmt: skip
        gm = stage.graph_module
        program = program_for(gm, captured.example_inputs, dims=captured.dynamic_dims,
                              parameters=captured.parameters, keep_debug=True)  # fmt: skip
        lowered = lower(program, what=what, source=gm)
        if not key and recipe.backend != "xnnpack":
            _refuse_backend(recipe.backend, lowered)
        timings[f"lower{key}"] = lowered.seconds
        start = time.perf_counter()
        made[key] = (lowered, check(lowered, gm, dataset, example_inputs=captured.example_inputs))
        timings[f"check_pte{key}"] = time.perf_counter() - start
    return PteBuild(*made[""], *made["_float"])


def _checkpoint_meta(
    captured: CapturedModel, recipe: Recipe, dataset: Dataset
) -> dict[str, str | int | float]:
    """What a QAT checkpoint of the CLI says it was made of (the app's resume keys)."""
    return {"spec": str(captured.spec), "recipe": recipe.to_json(), "data": dataset.spec,
            "eval_every": 0}  # fmt: skip


def _refuse_backend(backend: str, lowered: Lowered) -> None:
    counts, outside = lowered.counts, lowered.outside
    listed = ", ".join(f"{n.node} ({n.op})" for n in outside[:6])
    more = f" and {len(outside) - 6} more" if len(outside) > 6 else ""
    raise LoweringError(
        f"The recipe quantizes for {backend}, not for XNNPACK: XNNPACK takes "
        f"{counts['xnnpack']} of the converted model's {sum(counts.values())} op nodes and "
        f"leaves {counts['portable']} to portable kernels: {listed}{more}.",
        'Quantize with the xnnpack backend (--backend xnnpack, or "backend": "xnnpack" in '
        "the recipe), or export the .pt2 for Inductor instead.",
    )


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
