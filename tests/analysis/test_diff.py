"""diff_stages / diff_to_dot / code_diff on the digits CNN's PTQ and QAT stages."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
import torch
from torch import nn

from workbench.analysis.diff import KINDS, StageDiff, code_diff, diff_stages
from workbench.artifacts.report import op_counts
from workbench.drawing.diff import DIFF_COLOURS, diff_to_dot
from workbench.graph.nodes import QDQ_OPS
from workbench.graph.view import describe
from workbench.model.capture import CapturedModel, ModelSpec, dynamic_dims, export_model
from workbench.quantization.recipe import QuantSetting, Recipe
from workbench.stages.stage import Stage
from workbench.stages.steps import convert, exported_stage, prepare
from workbench.stages.training import QatConfig, train_qat

CONV_BN = {"conv2d": "batch_norm", "conv2d_1": "batch_norm_1", "conv2d_2": "batch_norm_2",
           "conv2d_3": "batch_norm_3"}  # fmt: skip


@pytest.fixture(scope="module")
def qat(captured: dict[str, CapturedModel], digits_data: Any) -> dict[str, Stage]:
    """Digits CNN through QAT (default recipe, 8 steps of 32): every stage."""
    model = captured["digits_cnn"]
    prepared = prepare(model, Recipe(mode="qat"))
    trained = train_qat(prepared, digits_data, QatConfig(steps=8, batch_size=32), keep="last")
    return {"exported": exported_stage(model), "prepared": prepared, "trained": trained,
            "converted": convert(trained)}  # fmt: skip


def diff(stages: dict[str, Stage], before: str, after: str) -> StageDiff:
    return diff_stages(stages[before].graph_module, stages[after].graph_module,
                       before_stage=before, after_stage=after)  # fmt: skip


def added_qdq(d: StageDiff) -> dict[str, int]:
    return dict(sorted(Counter(c.op for c in d.changes
                               if c.kind == "added" and c.op in QDQ_OPS).items()))  # fmt: skip


def qdq_ops(gm: torch.fx.GraphModule) -> dict[str, int]:
    return {op: n for op, n in op_counts(gm).items() if op in QDQ_OPS}


def test_qat_prepare_groups_each_batch_norm_with_its_conv(qat: dict[str, Stage]) -> None:
    d = diff(qat, "exported", "prepared")
    assert d.counts() == {"unchanged": 33, "renamed": 0, "rewritten": 8, "added": 41,
                          "removed": 4}  # fmt: skip
    for conv, bn in CONV_BN.items():
        change = d.change(bn, "before")
        assert (change.kind, change.group, change.origin) == ("rewritten", conv, bn)
    # The conv is renamed (and rewritten: its weight now comes through the fusion helpers).
    assert d.counterparts("conv2d_1", "before") == ["conv2d_5"]
    assert d.counterparts("conv2d_5", "after") == ["conv2d_1"]
    conv = d.change("conv2d_1", "before")
    assert conv.kind == "rewritten"
    assert conv.detail == ("renamed conv2d_1 -> conv2d_5; weight now fake-quantized and scaled "
                           "by the BN fusion (mul_1), was float (block1_conv1_weight)")  # fmt: skip
    assert d.change("batch_norm_1", "before").detail == (
        "renamed batch_norm_1 -> batch_norm_5; input: conv2d_1 -> div_3; training: False -> True"
    )
    before, after = d.group_members("conv2d_1")
    assert before == ["block1_conv1_weight", "block1_bn1_weight", "block1_bn1_bias",
                      "block1_bn1_running_mean", "block1_bn1_running_var", "conv2d_1",
                      "batch_norm_1"]  # fmt: skip
    assert after == ["block1_conv1_weight", "block1_bn1_weight", "block1_bn1_bias",
                     "block1_bn1_running_mean", "block1_bn1_running_var", "add_2", "sqrt_1",
                     "div_2", "reshape_2", "mul_1", "activation_post_process_3", "conv2d_5",
                     "reshape_3", "div_3", "batch_norm_5"]  # fmt: skip
    helpers = [c for c in d.changes if c.kind == "added" and c.op not in
               ("FusedMovingAvgObsFakeQuantize",)]  # fmt: skip
    assert Counter(c.group for c in helpers) == {conv: 7 for conv in CONV_BN}
    assert Counter(c.op for c in helpers) == {"add": 4, "sqrt": 4, "div": 8, "reshape": 8,
                                              "mul": 4}  # fmt: skip
    assert Counter(c.op for c in d.changes if c.kind == "added") == {
        "FusedMovingAvgObsFakeQuantize": 13, "add": 4, "sqrt": 4, "div": 8, "reshape": 8,
        "mul": 4}  # fmt: skip
    # Dead num_batches_tracked buffers are dropped by prepare.
    assert [c.before for c in d.changes if c.kind == "removed"] == [
        "stem_bn_num_batches_tracked", "block1_bn1_num_batches_tracked",
        "block1_bn2_num_batches_tracked", "block2_bn_num_batches_tracked"]  # fmt: skip
    assert d.summary().splitlines() == [
        "exported -> prepared: 33 unchanged, 0 renamed, 8 rewritten, 41 added, 4 removed",
        *(f"{conv}: 7 fusion helper nodes added; weight now fake-quantized and scaled by the "
          "BN fusion" for conv in CONV_BN),
    ]  # fmt: skip


def test_qat_training_changes_values_and_batch_norm_mode(qat: dict[str, Stage]) -> None:
    d = diff(qat, "prepared", "trained")
    assert d.counts() == {"unchanged": 43, "renamed": 0, "rewritten": 39, "added": 0,
                          "removed": 0}  # fmt: skip
    rewritten = Counter(c.op for c in d.changes if c.kind == "rewritten")
    assert rewritten == {"param": 22, "FusedMovingAvgObsFakeQuantize": 13, "batch_norm": 4}
    bn = d.change("batch_norm_5", "before")
    # The train/eval switch re-creates batch_norm from a pattern graph: matched by its weight.
    # (each switch renumbers it: its number depends on how many evaluations the run made)
    assert bn.after.startswith("batch_norm_") and (bn.group, bn.origin) == (
        "conv2d_1",
        "batch_norm_1",
    )
    assert bn.detail == f"renamed batch_norm_5 -> {bn.after}; training: True -> False"


@pytest.mark.parametrize("before", ["trained", "prepared", "exported"])
def test_qat_convert_folds_every_batch_norm(qat: dict[str, Stage], before: str) -> None:
    d = diff(qat, before, "converted")
    converted = qat["converted"].graph_module
    bns = [c for c in d.changes if c.op == "batch_norm"]
    assert [(c.kind, c.group) for c in bns] == [("removed", conv) for conv in CONV_BN]
    assert [c.detail for c in bns] == ["folded into conv2d", "folded into conv2d_8",
                                       "folded into conv2d_9", "folded into conv2d_10"]  # fmt: skip
    assert (
        added_qdq(d)
        == qdq_ops(converted)
        == {"dequantize_per_channel": 5, "dequantize_per_tensor": 9, "quantize_per_tensor": 8}
    )
    expected = {
        "trained": {"unchanged": 7, "renamed": 0, "rewritten": 9, "added": 41, "removed": 66},
        "prepared": {"unchanged": 6, "renamed": 0, "rewritten": 10, "added": 41, "removed": 66},
        "exported": {"unchanged": 6, "renamed": 0, "rewritten": 10, "added": 41, "removed": 29},
    }[before]  # fmt: skip
    assert d.counts() == expected
    assert d.counterparts("conv2d_1" if before == "exported" else "conv2d_5", "before") == [
        "conv2d_8"]  # fmt: skip


def test_removed_batch_norm_maps_to_its_fused_group(qat: dict[str, Stage]) -> None:
    d = diff(qat, "prepared", "converted")
    group = ["_scale_2", "_zero_point_2", "quantize_per_channel_1", "dequantize_per_channel_1",
             "block1_conv1_weight_bias", "conv2d_8"]  # fmt: skip
    assert d.counterparts("batch_norm_5", "before") == group
    assert d.group_members("conv2d_1")[1] == group
    assert d.counterparts("conv2d_8", "after") == ["conv2d_5"]
    # A fusion helper removed by convert maps to the same converted nodes.
    assert d.counterparts("div_3", "before") == group
    assert d.summary().splitlines()[2] == (
        "conv2d_1: batch_norm_1 folded; 7 fusion helper nodes removed; weight now int8 per-channel"
    )


def test_ptq_stages(digits_ptq: dict[str, Stage]) -> None:
    prepared = diff(digits_ptq, "exported", "prepared")
    assert prepared.counts() == {"unchanged": 9, "renamed": 0, "rewritten": 12, "added": 17,
                                 "removed": 24}  # fmt: skip
    # prepare_pt2e folds BN into the conv before annotating.
    bn = prepared.change("batch_norm_1", "before")
    assert (bn.kind, bn.group, bn.detail) == ("removed", "conv2d_1", "folded into conv2d_1")
    assert prepared.change("conv2d_1", "before").detail == (
        "bias: None -> block1_conv1_weight_bias"
    )
    assert prepared.change("block1_conv1_weight", "before").detail.startswith("values changed")

    calibrated = diff(digits_ptq, "prepared", "calibrated")
    assert calibrated.counts() == {"unchanged": 25, "renamed": 0, "rewritten": 13, "added": 0,
                                   "removed": 0}  # fmt: skip
    assert {c.op for c in calibrated.changes if c.kind == "rewritten"} == {
        "HistogramObserver", "PerChannelMinMaxObserver"}  # fmt: skip

    converted = diff(digits_ptq, "calibrated", "converted")
    assert converted.counts() == {"unchanged": 15, "renamed": 0, "rewritten": 5, "added": 37,
                                  "removed": 18}  # fmt: skip
    assert (
        added_qdq(converted)
        == qdq_ops(digits_ptq["converted"].graph_module)
        == {"dequantize_per_channel": 5, "dequantize_per_tensor": 9, "quantize_per_tensor": 8}
    )

    whole = diff(digits_ptq, "exported", "converted")
    assert [(c.kind, c.group) for c in whole.changes if c.op == "batch_norm"] == [
        ("removed", conv) for conv in CONV_BN]  # fmt: skip
    assert added_qdq(whole) == added_qdq(converted)
    assert whole.summary() == "\n".join([
        "exported -> converted: 7 unchanged, 0 renamed, 9 rewritten, 41 added, 29 removed",
        "conv2d: batch_norm folded; weight now int8 per-channel",
        "conv2d_1: batch_norm_1 folded; weight now int8 per-channel",
        "conv2d_2: batch_norm_2 folded; weight now int8 per-channel",
        "conv2d_3: batch_norm_3 folded; weight now int8 per-channel",
        "linear: weight now int8 per-channel",
    ])  # fmt: skip


def test_tables(digits_ptq: dict[str, Stage]) -> None:
    d = diff(digits_ptq, "calibrated", "converted")
    table = d.table()
    assert list(table.columns) == ["kind", "before", "after", "origin", "group", "op", "module",
                                   "detail"]  # fmt: skip
    assert len(table) == len(d.changes) == 75
    assert table.iloc[0].to_dict() == {
        "kind": "removed", "before": "stem_conv_weight", "after": None,
        "origin": "stem.conv.weight", "group": "conv2d", "op": "param", "module": "stem.conv",
        "detail": "no longer read by the graph"}  # fmt: skip
    by_module = d.by_module()
    assert list(by_module.columns) == list(KINDS)
    assert by_module.loc["block1.conv1"].to_dict() == {
        "unchanged": 1, "renamed": 0, "rewritten": 1, "added": 4, "removed": 2}  # fmt: skip
    assert int(by_module.to_numpy().sum()) == 75


def test_same_graph_is_all_unchanged(digits_ptq: dict[str, Stage]) -> None:
    gm = digits_ptq["converted"].graph_module
    d = diff_stages(gm, gm, before_stage="converted", after_stage="converted")
    assert d.counts() == {"unchanged": 57, "renamed": 0, "rewritten": 0, "added": 0,
                          "removed": 0}  # fmt: skip
    assert len(d.changes) == len(gm.graph.nodes)
    assert d.summary() == (
        "converted -> converted: 57 unchanged, 0 renamed, 0 rewritten, 0 added, 0 removed"
    )


class TinyLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


TINY_BEFORE = r"""digraph exported {
	graph [fontname=Helvetica fontsize=10 rankdir=TB]
	node [fontname=Helvetica fontsize=10 shape=box style="rounded,filled"]
	edge [arrowsize=0.6 color="#555555"]
	x [label="x\nbatch×3 f32" fillcolor="#e0e0e0" id=x shape=ellipse tooltip=unchanged]
	linear [label="linear  [rewritten]\nLinear fc\nbatch×2 f32\nweight 2×3, bias 2" fillcolor="#fdae6b" id=linear tooltip="rewritten: weight now int8 per-channel (quantize_per_channel_default), was float (fc_weight)"]
	output [label=output fillcolor="#e0e0e0" id=output shape=ellipse tooltip=unchanged]
	x -> linear
	linear -> output
}
"""  # noqa: E501

TINY_AFTER = r"""digraph converted {
	graph [fontname=Helvetica fontsize=10 rankdir=TB]
	node [fontname=Helvetica fontsize=10 shape=box style="rounded,filled"]
	edge [arrowsize=0.6 color="#555555"]
	dequantize_per_channel_default [label="dequantize_per_channel_default · dequantize_per_channel  [added]\n_frozen_param0 scalar, _scale_0 scalar, _zero_point_0 scalar" fillcolor="#a1d99b" id=dequantize_per_channel_default tooltip="added: int8 per-channel (axis 0) on quantize_per_channel_default"]
	x [label="x\nbatch×3 f32" fillcolor="#e0e0e0" id=x shape=ellipse tooltip=unchanged]
	quantize_per_tensor_default [label="quantize_per_tensor_default · quantize_per_tensor  [added]" fillcolor="#a1d99b" id=quantize_per_tensor_default tooltip="added: uint8 scale=0.00784314 zero_point=127 on x"]
	dequantize_per_tensor_default [label="dequantize_per_tensor_default · dequantize_per_tensor  [added]" fillcolor="#a1d99b" id=dequantize_per_tensor_default tooltip="added: uint8 scale=0.00784314 zero_point=127 on x"]
	linear [label="linear  [rewritten]\nLinear fc\nbatch×2 f32\nbias 2" fillcolor="#fdae6b" id=linear tooltip="rewritten: weight now int8 per-channel (quantize_per_channel_default), was float (fc_weight)"]
	output [label=output fillcolor="#e0e0e0" id=output shape=ellipse tooltip=unchanged]
	x -> quantize_per_tensor_default
	quantize_per_tensor_default -> dequantize_per_tensor_default
	dequantize_per_tensor_default -> linear
	dequantize_per_channel_default -> linear
	linear -> output
}
"""  # noqa: E501


def test_exact_dot_of_a_three_node_model_before_and_after_ptq() -> None:
    x = torch.linspace(-1, 1, 12).reshape(4, 3)  # min/max observers: scale 2/255
    program, _ = export_model(TinyLinear(), (x,))
    dynamic = any(d.dim == 0 for d in dynamic_dims(program))
    model = CapturedModel(ModelSpec("python", "tiny.py", "tiny"), program, (x,), dynamic, 0.0)
    exported = exported_stage(model)
    prepared = prepare(model, Recipe(default=QuantSetting(observer="minmax")))
    calibrating = prepared.copy_module()
    calibrating(x)
    converted = convert(Stage("calibrated", calibrating, "one batch", 0.0))
    d = diff_stages(exported.graph_module, converted.graph_module,
                    before_stage="exported", after_stage="converted")  # fmt: skip
    assert d.counts() == {"unchanged": 3, "renamed": 0, "rewritten": 1, "added": 6,
                          "removed": 1}  # fmt: skip
    before_view = describe(exported.graph_module, stage="exported")
    after_view = describe(converted.graph_module, stage="converted")
    assert diff_to_dot(before_view, d, side="before") == TINY_BEFORE
    assert diff_to_dot(after_view, d, side="after") == TINY_AFTER


REMOVED_BEFORE = r"""digraph before {
	graph [fontname=Helvetica fontsize=10 rankdir=TB]
	node [fontname=Helvetica fontsize=10 shape=box style="rounded,filled"]
	edge [arrowsize=0.6 color="#555555"]
	x [label=x fillcolor="#e0e0e0" id=x shape=ellipse tooltip=unchanged]
	neg [label="neg  [removed]" color="#e6550d" fillcolor="#ffffff" id=neg penwidth=2 style="rounded,filled,dashed" tooltip=removed]
	relu [label="relu  [rewritten]" fillcolor="#fdae6b" id=relu tooltip="rewritten: input: neg -> x"]
	output [label=output fillcolor="#e0e0e0" id=output shape=ellipse tooltip=unchanged]
	x -> neg
	neg -> relu
	relu -> output
}
"""  # noqa: E501

REMOVED_AFTER = r"""digraph after {
	graph [fontname=Helvetica fontsize=10 rankdir=TB]
	node [fontname=Helvetica fontsize=10 shape=box style="rounded,filled"]
	edge [arrowsize=0.6 color="#555555"]
	x [label=x fillcolor="#e0e0e0" id=x shape=ellipse tooltip=unchanged]
	relu [label="relu  [rewritten]" fillcolor="#fdae6b" id=relu tooltip="rewritten: input: neg -> x"]
	output [label=output fillcolor="#e0e0e0" id=output shape=ellipse tooltip=unchanged]
	x -> relu
	relu -> output
}
"""  # noqa: E501


def test_exact_dot_of_a_removed_node() -> None:
    """Hand-made graphs (no provenance: nodes match by name); the removed node is dashed."""
    before = torch.fx.symbolic_trace(lambda x: torch.relu(torch.neg(x)))
    after = torch.fx.symbolic_trace(lambda x: torch.relu(x))
    d = diff_stages(before, after, before_stage="before", after_stage="after")
    assert [(c.kind, c.before, c.after) for c in d.changes] == [
        ("unchanged", "x", "x"), ("removed", "neg", None), ("rewritten", "relu", "relu"),
        ("unchanged", "output", "output")]  # fmt: skip
    assert diff_to_dot(describe(before, stage="before"), d, side="before") == REMOVED_BEFORE
    assert diff_to_dot(describe(after, stage="after"), d, side="after") == REMOVED_AFTER
    assert DIFF_COLOURS["removed"] in REMOVED_BEFORE


def box_ids(dot: str) -> list[str]:
    return re.findall(r'^\s*"?([^\s"]+)"? \[(?:style=\S+ )?label=', dot, flags=re.MULTILINE)


def test_focus_group_keeps_the_group_and_its_neighbours(qat: dict[str, Stage]) -> None:
    d = diff(qat, "prepared", "converted")
    before = describe(qat["prepared"].graph_module, stage="prepared")
    after = describe(qat["converted"].graph_module, stage="converted")
    dot = diff_to_dot(before, d, side="before", focus_group="conv2d_1")
    # Parameters are folded into their readers' labels; neighbours come along.
    # Module clusters come after loose nodes: mul_1, conv2d_5, batch_norm_5, relu_1.
    assert box_ids(dot) == ["activation_post_process_2", "add_2", "sqrt_1", "div_2",
                            "reshape_2", "mul_1", "conv2d_5", "batch_norm_5", "relu_1",
                            "activation_post_process_3", "reshape_3", "div_3"]  # fmt: skip
    assert dot.count('style="rounded,filled,dashed"') == 10  # all but conv2d_5 and relu_1
    dot = diff_to_dot(after, d, side="after", focus_group="conv2d_1")
    assert box_ids(dot) == ["dequantize_per_tensor_default_8", "dequantize_per_channel_1",
                            "conv2d_8", "relu_1"]  # fmt: skip
    assert dot.count(f'fillcolor="{DIFF_COLOURS["added"]}"') == 2


def test_code_diff(digits_ptq: dict[str, Stage]) -> None:
    before = digits_ptq["calibrated"].graph_module
    after = digits_ptq["converted"].graph_module
    text = code_diff(before, after)
    assert text.startswith("--- before\n+++ after\n@@ ")
    added = [line for line in text.splitlines() if line.startswith("+") and "= torch.ops." in line]
    calls = Counter(re.search(r"torch\.ops\.\w+\.(\w+)\.", line)[1] for line in added)  # type: ignore[index]
    assert {op: calls[op] for op in QDQ_OPS if calls[op]} == qdq_ops(after)
    assert sum(line.startswith("-") and "activation_post_process" in line
               for line in text.splitlines()) >= 13  # fmt: skip
    assert code_diff(after, after) == ""


def test_overlay_shows_removed_nodes_beside_the_after_graph() -> None:
    """exported -> PTQ-prepared of a tiny conv-bn: the BN is removed, observers are added."""
    import torch
    from torch import nn

    from workbench.drawing.diff import REMOVED_PREFIX, overlay_to_dot, overlay_view
    from workbench.graph.view import describe
    from workbench.model.capture import dynamic_dims, export_model
    from workbench.quantization.recipe import Recipe
    from workbench.stages.steps import prepare

    class ConvBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x))

    from workbench.model.capture import CapturedModel, ModelSpec

    program, _ = export_model(ConvBN().eval(), (torch.rand(2, 1, 4, 4),))
    dynamic = any(d.dim == 0 for d in dynamic_dims(program))
    captured = CapturedModel(ModelSpec("sample", "tiny"), program, (torch.rand(2, 1, 4, 4),),
                             dynamic, 0.0)  # fmt: skip
    before_gm = captured.graph_module()
    after_gm = prepare(captured, Recipe()).graph_module
    diff = diff_stages(before_gm, after_gm, before_stage="exported", after_stage="prepared")
    before, after = describe(before_gm), describe(after_gm)
    view = overlay_view(before, after, diff)
    removed = [n.name for n in view.nodes if n.name.startswith(REMOVED_PREFIX)]
    assert f"{REMOVED_PREFIX}batch_norm" in removed
    assert len(view) == len(after) + len(removed)
    # The removed BN is drawn between the conv's after-side node and the output.
    assert ("conv2d", f"{REMOVED_PREFIX}batch_norm") in view.edges
    dot = overlay_to_dot(before, after, diff)
    assert '"before/batch_norm" [label="before/batch_norm · batch_norm  [removed]' in dot
    assert 'style="rounded,filled,dashed"' in dot


def test_collapsed_diff_boxes_count_their_changes(digits_ptq: dict[str, Stage]) -> None:
    from workbench.drawing.diff import diff_opening_depth, grouped_view, overlay_to_dot
    from workbench.drawing.dot import expand_group

    d = diff(digits_ptq, "calibrated", "converted")
    before = describe(digits_ptq["calibrated"].graph_module, stage="calibrated")
    after = describe(digits_ptq["converted"].graph_module, stage="converted")
    assert diff_opening_depth(before, after, d) is None  # a small graph is drawn whole
    # q/dq nodes have no module stack; the diff puts them in the module of the op they serve.
    assert after["quantize_per_tensor_default"].module_chain == ()
    grouped = grouped_view(after, d, side="after")
    assert grouped["quantize_per_tensor_default"].module_chain == ("stem", "stem.conv")
    lines = {}
    for side, view in (("before", before), ("after", after)):
        dot = diff_to_dot(view, d, side=side, collapse_depth=1)  # type: ignore[arg-type]
        lines[side] = [x.strip() for x in dot.splitlines() if x.strip().startswith('"module/')]
    after_stem = next(x for x in lines["after"] if x.startswith('"module/stem" ['))
    assert after_stem == (
        '"module/stem" [label="stem\\nConvBNReLU\\n8 nodes\\n1 rewritten · 6 added" '
        f'fillcolor="{DIFF_COLOURS["rewritten"]}" id="module/stem" shape=box3d '
        'tooltip="stem: 1 unchanged, 1 rewritten, 6 added (click to expand)"]'
    )
    # Only observers removed: a white box with the dashed red border of removed nodes.
    before_pool = next(x for x in lines["before"] if x.startswith('"module/pool" ['))
    assert before_pool == (
        '"module/pool" [label="pool\\nMaxPool2d\\n2 nodes\\n1 removed" '
        f'color="{DIFF_COLOURS["removed"]}" fillcolor="#ffffff" id="module/pool" penwidth=2 '
        'shape=box3d style="rounded,filled,dashed" tooltip="pool: 1 unchanged, 1 removed '
        '(click to expand)"]'
    )
    after_pool = next(x for x in lines["after"] if x.startswith('"module/pool" ['))
    assert f'\\n2 added" fillcolor="{DIFF_COLOURS["added"]}"' in after_pool
    # Expanding a group (as a click does) draws its nodes with their per-node colours.
    opened = expand_group(grouped, (), "stem", collapse_depth=1)
    assert {"stem", "stem.conv", "stem.relu"} <= opened
    dot = diff_to_dot(after, d, side="after", collapse_depth=1, expanded=opened)
    assert '"module/stem"' not in dot and 'id="cluster/stem" label="▾ stem (ConvBNReLU)"' in dot
    assert f'fillcolor="{DIFF_COLOURS["added"]}" id=quantize_per_tensor_default ' in dot
    overlay = overlay_to_dot(before, after, d, collapse_depth=1)
    assert '"module/pool" [label="pool\\nMaxPool2d\\n4 nodes\\n2 added · 1 removed"' in overlay
