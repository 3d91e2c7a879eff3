"""check_converted: what the recipe asked for against what the converted graph does."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import torch

from workbench.analysis.checks import Finding, check_converted
from workbench.analysis.diff import diff_stages
from workbench.analysis.folding import fold_reports
from workbench.graph.view import GraphView
from workbench.model.capture import CapturedModel
from workbench.quantization.quantizer import quantizable_nodes
from workbench.quantization.recipe import Override, QuantSetting, Recipe
from workbench.stages.stage import Stage
from workbench.stages.steps import calibrate, convert, exported_stage, prepare
from workbench.stages.training import QatConfig, train_qat

KEEP_CONV2D_1 = Override("node", "conv2d_1", QuantSetting(keep_float=True))


def effective(captured: dict[str, CapturedModel], recipe: Recipe, view: GraphView) -> Any:
    return quantizable_nodes(captured["digits_cnn"].graph_module(), recipe, view)


def qat_stages(model: CapturedModel, data: Any, recipe: Recipe) -> dict[str, Stage]:
    prepared = prepare(model, recipe)
    trained = train_qat(prepared, data, QatConfig(steps=8, batch_size=32), keep="last")
    return {"exported": exported_stage(model), "trained": trained, "converted": convert(trained)}


def test_default_ptq_and_qat_have_no_findings(
    captured: dict[str, CapturedModel],
    views: dict[str, GraphView],
    digits_ptq: dict[str, Stage],
    digits_data: Any,
) -> None:
    view = views["digits_cnn"]
    ptq = effective(captured, Recipe(), view)
    assert len(ptq) == 13
    assert check_converted(digits_ptq["converted"].graph_module, view, ptq) == []
    recipe = Recipe(mode="qat")
    qat = qat_stages(captured["digits_cnn"], digits_data, recipe)
    assert check_converted(qat["converted"].graph_module, view,
                           effective(captured, recipe, view)) == []  # fmt: skip


def test_kept_float_conv_in_qat_leaves_its_batch_norm(
    captured: dict[str, CapturedModel], views: dict[str, GraphView], digits_data: Any
) -> None:
    view = views["digits_cnn"]
    recipe = Recipe(mode="qat").with_overrides(KEEP_CONV2D_1)
    stages = qat_stages(captured["digits_cnn"], digits_data, recipe)
    converted = stages["converted"].graph_module
    findings = check_converted(converted, view, effective(captured, recipe, view))
    diff = diff_stages(stages["exported"].graph_module, converted,
                       before_stage="exported", after_stage="converted")  # fmt: skip
    (bn,) = diff.counterparts("batch_norm_1", "before")
    (conv,) = diff.counterparts("conv2d_1", "before")
    assert findings == [
        Finding("unfolded_batch_norm", bn,
                f"batch_norm_1 ({bn}) was not folded into a conv: its conv conv2d_1 ({conv}) "
                "is kept float by node:conv2d_1, so QAT's fusion helpers and the batch_norm "
                "stay (folding needs the conv's weight quantize/dequantize).")
    ]  # fmt: skip
    assert findings[0].severity == "warning"
    assert not [f for f in findings if f.kind == "runs_in_float"]
    # The diff shows the same thing: the batch_norm is still there, the others are folded.
    assert diff.change("batch_norm_1", "before").kind == "rewritten"
    assert [
        diff.change(bn, "before").kind for bn in ("batch_norm", "batch_norm_2", "batch_norm_3")
    ] == ["removed"] * 3
    # ... and only the three folded convs have a fold to check.
    sample = next(iter(digits_data.eval_batches(64))).inputs
    reports = fold_reports(stages["trained"].graph_module, converted, sample)
    assert [r.conv for r in reports] == ["conv2d", "conv2d_2", "conv2d_3"]
    assert all(r.within_bound for r in reports)


def test_observers_left_and_float_nodes_before_convert(
    captured: dict[str, CapturedModel], views: dict[str, GraphView], digits_ptq: dict[str, Stage]
) -> None:
    view = views["digits_cnn"]
    calibrated = digits_ptq["calibrated"].graph_module
    findings = check_converted(calibrated, view, effective(captured, Recipe(), view))
    assert Counter(f.kind for f in findings) == {"observer_left": 13, "runs_in_float": 13}
    observers = [n.name for n in calibrated.graph.nodes if n.op == "call_module"]
    assert [f.node for f in findings if f.kind == "observer_left"] == observers
    assert findings[0] == Finding(
        "observer_left", "activation_post_process_1",
        "activation_post_process_1 (PerChannelMinMaxObserver) is still in the graph: convert "
        "replaces observers and fake quantizers with quantize/dequantize.")  # fmt: skip
    assert [f.node for f in findings if f.kind == "runs_in_float"] == [
        "conv2d", "relu", "conv2d_1", "relu_1", "conv2d_2", "add", "relu_2", "max_pool2d",
        "conv2d_3", "relu_3", "adaptive_avg_pool2d", "flatten", "linear"]  # fmt: skip


def test_wanted_quantized_but_float(
    captured: dict[str, CapturedModel], views: dict[str, GraphView], digits_data: Any
) -> None:
    """A model converted with conv2d_1 kept float, checked against the default recipe."""
    view = views["digits_cnn"]
    recipe = Recipe().with_overrides(KEEP_CONV2D_1)
    converted = convert(calibrate(prepare(captured["digits_cnn"], recipe), digits_data,
                                  batches=2)).graph_module  # fmt: skip
    assert check_converted(converted, view, effective(captured, recipe, view)) == []
    assert check_converted(converted, view, effective(captured, Recipe(), view)) == [
        Finding("runs_in_float", "conv2d_1",
                "conv2d_1 (conv2d_1) should be quantized (default), but its weight "
                "block1_conv1_weight is float.")
    ]  # fmt: skip


def test_dangling_quantize_and_dequantize(
    captured: dict[str, CapturedModel], views: dict[str, GraphView], digits_ptq: dict[str, Stage]
) -> None:
    view = views["digits_cnn"]
    gm = copy.deepcopy(digits_ptq["converted"].graph_module)
    nodes = {n.name: n for n in gm.graph.nodes}
    # max_pool2d reads the int8 tensor itself, so its dequantize is left without readers ...
    nodes["max_pool2d"].replace_input_with(nodes["dequantize_per_tensor_default_3"],
                                           nodes["quantize_per_tensor_default_3"])  # fmt: skip
    # ... and one more dequantize of relu's output that nothing reads.
    q = nodes["quantize_per_tensor_default_1"]
    with gm.graph.inserting_after(q):
        gm.graph.call_function(torch.ops.quantized_decomposed.dequantize_per_tensor.default,
                               (q, *q.args[1:]))  # fmt: skip
    gm.recompile()
    findings = check_converted(gm, view, effective(captured, Recipe(), view))
    assert findings == [
        Finding("dangling_qdq", "dequantize_per_tensor_default_10",
                "dequantize_per_tensor_default_10 dequantizes a tensor nothing reads."),
        Finding("dangling_qdq", "quantize_per_tensor_default_3",
                "quantize_per_tensor_default_3 is read by max_pool2d, not by a dequantize."),
        Finding("dangling_qdq", "dequantize_per_tensor_default_3",
                "dequantize_per_tensor_default_3 dequantizes a tensor nothing reads."),
    ]  # fmt: skip
    assert {f.severity for f in findings} == {"error"}


def test_shared_scale_mismatch_is_info(
    captured: dict[str, CapturedModel], views: dict[str, GraphView], digits_data: Any
) -> None:
    """XNNPACK quantizes both inputs of the residual add, each with its own observer."""
    view = views["digits_cnn"]
    recipe = Recipe(backend="xnnpack")
    converted = convert(calibrate(prepare(captured["digits_cnn"], recipe), digits_data,
                                  batches=2)).graph_module  # fmt: skip
    findings = check_converted(converted, view, effective(captured, recipe, view))
    assert [(f.kind, f.node, f.severity) for f in findings] == [("scale_mismatch", "add", "info")]
    add = next(n for n in converted.graph.nodes if n.name == "add")
    scales = [(a.name, a.args[1], a.args[2]) for a in add.all_input_nodes]
    assert len({(s, z) for _, s, z in scales}) == 2
    shown = ", ".join(f"{name} scale {s:.6g} zero_point {z}" for name, s, z in scales)
    assert findings[0].message == (
        f"info: the inputs of add have different scales ({shown}); one of them is requantized "
        "before the op."
    )


def test_pattern_tails_annotated_without_quantization_are_not_float_findings(
    captured: dict[str, CapturedModel], views: dict[str, GraphView], digits_data: Any
) -> None:
    """x86 marks the add after a linear as annotated but quantizes neither input nor output."""
    model, view = captured["attention_mlp"], views["attention_mlp"]
    recipe = Recipe()
    wanted = quantizable_nodes(model.graph_module(), recipe, view)
    assert {"add", "add_1", "add_2"} <= set(wanted)
    converted = convert(calibrate(prepare(model, recipe), digits_data, batches=2)).graph_module
    add = next(n for n in converted.graph.nodes if n.name == "add")
    assert [a.name for a in add.all_input_nodes] == ["linear", "pos_embed"]  # float inputs
    assert check_converted(converted, view, wanted) == []
