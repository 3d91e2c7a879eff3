"""to_dot / render_for_screen / dot_to_svg: exact DOT, collapse, overlays, the node budget."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from timing import time_limit
from torch import nn

from workbench.drawing.dot import (
    OPEN_COLLAPSED_ABOVE,
    box_of,
    collapse_group,
    count_boxes,
    dot_to_svg,
    expand_group,
    group_depth,
    max_depth,
    opening_depth,
    render_for_screen,
    reveal,
    single_node_modules,
    to_dot,
)
from workbench.drawing.overlays import NodeOverlay
from workbench.graph.view import GraphView, describe
from workbench.model.capture import capture, dynamic_dims, export_model

RENDER_MODELS = Path(__file__).resolve().parents[1] / "models" / "render_models.py"
needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz `dot` is not installed (apt-get install graphviz)"
)


def box_ids(dot: str) -> list[str]:
    """Ids of the boxes (node statements) in DOT text, in order."""
    return re.findall(r'^\s*"?([^\s"]+)"? \[label=', dot, flags=re.MULTILINE)


class Tiny(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


TINY_SOURCE = f"{__file__}:{Tiny.forward.__code__.co_firstlineno + 1}"

# Graphviz indents statements with a tab; `\n` inside a label is DOT's line break.
TINY_DOT = r"""digraph exported {
	graph [fontname=Helvetica fontsize=10 rankdir=TB]
	node [fontname=Helvetica fontsize=10 shape=box style="rounded,filled"]
	edge [arrowsize=0.6 color="#555555"]
	x [label="x\nbatch×3 f32" fillcolor="#e0e0e0" id=x shape=ellipse tooltip="x: x"]
	relu [label="relu\nbatch×3 f32" fillcolor="#fdffb6" id=relu tooltip="relu: aten.relu.default | SOURCE: return torch.relu(x)"]
	output [label=output fillcolor="#e0e0e0" id=output shape=ellipse tooltip="output: output"]
	x -> relu
	relu -> output
}
"""  # noqa: E501


def test_exact_dot_of_a_three_node_model() -> None:
    program, _ = export_model(Tiny(), (torch.rand(2, 3),))
    dynamic = any(d.dim == 0 for d in dynamic_dims(program))
    assert dynamic
    view = describe(program.module(check_guards=False))
    assert [n.name for n in view.nodes] == ["x", "relu", "output"]
    assert to_dot(view) == TINY_DOT.replace("SOURCE", TINY_SOURCE)
    assert count_boxes(view) == 3 and max_depth(view) == 0


def test_collapse_depth_one_on_digits(views: dict[str, GraphView]) -> None:
    view = views["digits_cnn"]
    top_with_nodes = [m.path for m in view.modules.children if m.total_nodes]
    root_ops = [n for n in view.modules.nodes if not view[n].is_param]
    assert top_with_nodes == ["stem", "block1", "block2", "fc", "pool", "avgpool"]
    assert root_ops == ["x", "flatten", "output"]
    assert count_boxes(view, collapse_depth=1) == len(top_with_nodes) + len(root_ops) == 9
    dot = to_dot(view, collapse_depth=1)
    ids = box_ids(dot)
    # A module of one node (pool, avgpool, fc) is drawn as that node: a box would say less.
    assert ids == [
        "x",
        "module/stem",
        "module/block1",
        "max_pool2d",
        "module/block2",
        "adaptive_avg_pool2d",
        "flatten",
        "linear",
        "output",
    ]
    assert {i for i in ids if i.startswith("module/")} == {"module/stem", "module/block1",
                                                           "module/block2"}  # fmt: skip
    assert "subgraph" not in dot  # every module is a single box, so no frames
    # A collapsed box says what it holds: path, type and the number of (non-param) nodes.
    assert '"module/stem" [label="stem\\nConvBNReLU\\n3 nodes"' in dot
    assert '"module/block1" [label="block1\\nResidualBlock\\n7 nodes"' in dot
    assert '"module/block1" -> max_pool2d' in dot
    assert len(re.findall(r" -> ", dot)) == 8  # a chain: edges inside a box are dropped


def test_box_counts_at_each_depth(views: dict[str, GraphView]) -> None:
    digits = views["digits_cnn"]
    assert max_depth(digits) == 2
    assert count_boxes(digits) == 19  # 45 nodes less 26 folded params
    assert count_boxes(digits, collapse_depth=2) == 19  # depth-2 modules hold one op each
    assert count_boxes(digits, fold_params=False) == 45
    mobilenet = views["mobilenet"]
    assert max_depth(mobilenet) == 3
    assert [count_boxes(mobilenet, collapse_depth=d) for d in (1, 2, 3)] == [10, 21, 35]


def test_default_render_of_digits_is_not_collapsed(views: dict[str, GraphView]) -> None:
    rendered = render_for_screen(views["digits_cnn"])
    assert (rendered.collapse_depth, rendered.chunk_size) == (None, None)
    assert (rendered.boxes, rendered.auto_collapsed) == (19, False)
    assert rendered.dot == to_dot(views["digits_cnn"])
    kept = render_for_screen(views["digits_cnn"], collapse_depth=1)
    assert (kept.collapse_depth, kept.boxes, kept.auto_collapsed) == (1, 9, False)


def test_overlay_styles_one_node_only(views: dict[str, GraphView]) -> None:
    view = views["digits_cnn"]
    plain = to_dot(view)
    overlay = {"conv2d": NodeOverlay(fill="#ff0000", badge="int8", tooltip="hello")}
    dot = to_dot(view, overlay=overlay)
    conv_line = next(line for line in dot.splitlines() if line.strip().startswith("conv2d ["))
    assert conv_line.strip() == (
        # Inside the frame "stem (ConvBNReLU)" the module reads relative to it: conv.
        'conv2d [label="conv2d  [int8]\\nConv2d conv\\nbatch×16×8×8 f32\\n'
        'weight 16×1×3×3" fillcolor="#ff0000" id=conv2d tooltip=hello]'
    )
    assert dot.count("#ff0000") == 1
    assert dot.count("[int8]") == 1
    assert dot.count("tooltip=hello") == 1
    # Every other line is untouched.
    changed = [a for a, b in zip(dot.splitlines(), plain.splitlines(), strict=True) if a != b]
    assert changed == [conv_line]


def test_overlay_border_on_a_collapsed_box(views: dict[str, GraphView]) -> None:
    dot = to_dot(
        views["digits_cnn"],
        collapse_depth=1,
        overlay={"module/block1": NodeOverlay(border="#00aa00", badge="skip")},
    )
    line = next(x for x in dot.splitlines() if x.strip().startswith('"module/block1" ['))
    assert 'label="block1  [skip]\\nResidualBlock\\n7 nodes"' in line
    assert 'color="#00aa00"' in line and "penwidth=2" in line
    assert dot.count("penwidth") == 1


def test_params_fold_into_their_consumer(views: dict[str, GraphView]) -> None:
    view = views["digits_cnn"]
    dot = to_dot(view)
    ids = box_ids(dot)
    assert "stem_conv_weight" not in ids
    assert not [i for i in ids if view[i].is_param]
    assert len(ids) == 19
    assert "stem_conv_weight" not in dot
    conv = next(line for line in dot.splitlines() if line.strip().startswith("conv2d ["))
    assert "weight 16×1×3×3" in conv
    linear = next(line for line in dot.splitlines() if line.strip().startswith("linear ["))
    assert "weight 10×32, bias 10" in linear


def test_fold_params_false_draws_them(views: dict[str, GraphView]) -> None:
    dot = to_dot(views["digits_cnn"], fold_params=False)
    ids = box_ids(dot)
    assert len(ids) == 45
    assert "stem_conv_weight" in ids
    # Drawn with its conv inside the frame "conv (Conv2d)": no module line repeating it.
    assert 'stem_conv_weight [label="stem_conv_weight · param\\n16×1×3×3 f32"' in dot
    assert "\tstem_conv_weight -> conv2d\n" in dot
    assert len(re.findall(r" -> ", dot)) == 41  # every edge of the view


@needs_dot
def test_svg_of_digits(views: dict[str, GraphView]) -> None:
    svg = dot_to_svg(to_dot(views["digits_cnn"]))
    assert svg.lstrip().startswith("<?xml")
    assert '<g id="conv2d" class="node">' in svg
    assert len(re.findall(r'<g id="[^"]+" class="node">', svg)) == 19
    assert re.findall(r'<g id="([^"]+)" class="cluster">', svg) == [
        "cluster/stem",
        "cluster/block1",
        "cluster/block2",
    ]


# The 10,002-node graph is captured, described and rendered in a background process started
# right after collection (conftest.py, tests/models/deep_render_report.py), because exporting
# 10,000 nodes takes 10-20 s; these tests check the numbers it reports.


def test_deep_model_sizes(deep_report: dict[str, Any]) -> None:
    report = deep_report
    print(f"\ndeep_mlp: {report['nodes']} nodes captured in {report['capture_seconds']:.1f} s")
    assert report["dynamic_batch"] is True
    assert report["nodes"] == 10_002
    assert report["edges"] == 2500 * 3 + 2500 + 1  # linear x 3 inputs, relu, output
    assert report["families"] == {
        "input": 1,
        "output": 1,
        "param": 5000,
        "linear": 2500,
        "activation": 2500,
    }
    assert report["max_depth"] == 2
    assert report["top_level_modules"] == 100
    assert report["boxes_by_depth"] == {"None": 5002, "1": 102, "2": 5002}


def test_node_budget_collapses_a_10k_node_graph(deep_report: dict[str, Any]) -> None:
    rendered = deep_report["rendered"]
    assert rendered["auto_collapsed"] is True
    assert rendered["collapse_depth"] == 1
    assert rendered["chunk_size"] is None
    assert rendered["boxes"] == 102 <= 1500
    ids = box_ids(rendered["dot"])
    assert len(ids) == rendered["boxes"]
    # nn.Sequential's forward argument is `input`, which FX names input_1.
    assert ids[:3] == ["input_1", "module/0", "module/1"] and ids[-1] == "output"
    assert ids[1:-1] == [f"module/{i}" for i in range(100)]
    assert '"module/99" [label="99\\nSequential\\n50 nodes"' in rendered["dot"]
    assert len(re.findall(r" -> ", rendered["dot"])) == 101
    print(f"\nrender_for_screen of 10,002 nodes: {deep_report['render_seconds']:.3f} s")


@needs_dot
def test_svg_of_the_collapsed_10k_node_graph(deep_report: dict[str, Any]) -> None:
    assert deep_report["svg_node_ids"] == box_ids(deep_report["rendered"]["dot"])
    print(
        f"\ndot_to_svg of the 10,002-node graph at budget 1500: {deep_report['svg_seconds']:.3f} s"
    )


def test_flat_model_over_budget_is_chunked() -> None:
    view = describe(capture(f"{RENDER_MODELS}:flat_chain").graph_module())
    assert len(view) == 152 and max_depth(view) == 0
    rendered = render_for_screen(view, node_budget=40)
    assert rendered.auto_collapsed is True
    assert rendered.collapse_depth is None
    assert rendered.chunk_size == 8  # ceil(152 / (40 // 2))
    assert rendered.boxes == 19 <= 40
    ids = box_ids(rendered.dot)
    assert ids == [f"chunk/{i}" for i in range(19)]
    assert '"chunk/0" [label="x … mul_6\\n8 nodes"' in rendered.dot
    assert '"chunk/18" [label="mul_143 … output\\n8 nodes"' in rendered.dot
    assert len(re.findall(r" -> ", rendered.dot)) == 18


def test_budget_with_more_top_level_modules_than_boxes() -> None:
    # Regression: render_for_screen used to chunk root-level nodes only and then double the
    # chunk size forever, since the 60 top-level module boxes never shrank.
    view = describe(capture(f"{RENDER_MODELS}:many_top_level").graph_module())
    assert count_boxes(view, collapse_depth=1) == 62  # 60 ReLU modules + input + output
    with time_limit(2):
        rendered = render_for_screen(view, node_budget=20)
    assert rendered.auto_collapsed is True
    assert (rendered.collapse_depth, rendered.chunk_size) == (1, 7)  # ceil(62 / (20 // 2))
    assert rendered.boxes == 9 <= 20
    assert box_ids(rendered.dot) == [f"chunk/{i}" for i in range(9)]
    assert '"chunk/0" [label="input_1 … relu_5\\n7 nodes"' in rendered.dot
    assert '"chunk/8" [label="relu_55 … output\\n6 nodes"' in rendered.dot


def test_chunked_boxes_count_with_params_drawn() -> None:
    # Regression: with fold_params=False the chunking loop counted boxes with params folded,
    # so Rendered.boxes said 10 while the DOT had 19.
    view = describe(capture(f"{RENDER_MODELS}:flat_params").graph_module())
    assert view.family_counts() == {"input": 1, "output": 1, "param": 100, "elementwise": 100}
    rendered = render_for_screen(view, node_budget=40, fold_params=False)
    assert rendered.chunk_size == 11  # ceil(202 / (40 // 2))
    assert len(box_ids(rendered.dot)) == 19
    assert rendered.boxes == 19


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.fc(x))


class TwoPairs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = Pair()
        self.b = Pair()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


@pytest.fixture(scope="module")
def pairs() -> GraphView:
    program, _ = export_model(TwoPairs(), (torch.rand(2, 4),))
    return describe(program.module(check_guards=False))


PAIRS_SOURCE = (
    f"{__file__}:{Pair.forward.__code__.co_firstlineno + 1}: return x + self.act(self.fc(x))"
)
# Group a opened, b a box. The frame of an opened group says so (▾, a click on its title closes
# the group); inside it module paths read relative to the frame: fc, not a.fc.
PAIRS_A_OPEN = r"""digraph exported {
	graph [fontname=Helvetica fontsize=10 rankdir=TB]
	node [fontname=Helvetica fontsize=10 shape=box style="rounded,filled"]
	edge [arrowsize=0.6 color="#555555"]
	x [label="x\nbatch×4 f32" fillcolor="#e0e0e0" id=x shape=ellipse tooltip="x: x"]
	subgraph cluster_a {
		color="#8899aa" fontcolor="#445566" id="cluster/a" label="▾ a (Pair)" style="rounded,dashed"
		linear [label="linear\nLinear fc\nbatch×4 f32\nweight 4×4, bias 4" fillcolor="#a8dadc" id=linear tooltip="linear: aten.linear.default | module a.fc (Linear) | SOURCE"]
		relu [label="relu\nReLU act\nbatch×4 f32" fillcolor="#fdffb6" id=relu tooltip="relu: aten.relu.default | module a.act (ReLU) | SOURCE"]
		add [label="add\nbatch×4 f32" fillcolor="#ffc8dd" id=add tooltip="add: aten.add.Tensor | module a (Pair) | SOURCE"]
	}
	"module/b" [label="b\nPair\n3 nodes" fillcolor="#dbe4ee" id="module/b" shape=box3d tooltip="b / Pair / 3 nodes (click to expand)"]
	output [label=output fillcolor="#e0e0e0" id=output shape=ellipse tooltip="output: output"]
	x -> linear
	linear -> relu
	x -> add
	relu -> add
	add -> "module/b"
	"module/b" -> output
}
"""  # noqa: E501


def test_an_expanded_group_opens_in_a_frame_and_the_others_stay_boxes(pairs: GraphView) -> None:
    assert box_ids(to_dot(pairs, collapse_depth=1)) == ["x", "module/a", "module/b", "output"]
    dot = to_dot(pairs, collapse_depth=1, expanded={"a"})
    assert dot == PAIRS_A_OPEN.replace("SOURCE", PAIRS_SOURCE)
    assert count_boxes(pairs, collapse_depth=1, expanded={"a"}) == 6


def test_expand_collapse_and_reveal_groups(pairs: GraphView) -> None:
    singles = single_node_modules(pairs)
    assert singles == {"a.fc", "a.act", "b.fc", "b.act"}  # drawn as their node, never a box
    assert expand_group(pairs, (), "a", collapse_depth=1) == {"a"} | singles
    assert collapse_group({"a", "a.fc", "b", "ab"}, "a") == {"b", "ab"}
    opened = reveal(pairs, ["relu_1"], (), collapse_depth=1)
    assert "b" in opened and "a" not in opened
    assert box_of(pairs["relu_1"], 1, opened) == "relu_1"
    assert box_of(pairs["relu"], 1, opened) == "module/a"
    assert reveal(pairs, ["relu_1"], (), collapse_depth=None) == singles
    # Within a budget: opening b would draw 6 boxes, over 5.
    assert reveal(pairs, ["relu_1"], (), collapse_depth=1, boxes=5) == singles
    rendered = render_for_screen(pairs, collapse_depth=1, expanded={"b"})
    assert (rendered.boxes, rendered.expanded) == (6, {"b"} | singles)
    assert rendered.dot == to_dot(pairs, collapse_depth=1, expanded={"b"})


def test_small_graphs_open_whole_and_big_ones_as_module_groups(pairs: GraphView) -> None:
    assert opening_depth(pairs) is None
    from benchmarks.models import deep_stack

    model, inputs = deep_stack(600)
    program, _ = export_model(model, inputs)
    view = describe(program.module(check_guards=False))
    assert len(view) > OPEN_COLLAPSED_ABOVE
    # 5 stages of 120 cells: depth 1 is 7 boxes, depth 2 (cells) over GROUP_BOXES.
    assert [count_boxes(view, collapse_depth=d) for d in (1, 2)] == [7, 122]
    assert group_depth(view) == opening_depth(view) == 1
    # A click opens a 25-cell stage to its ops: 75 boxes fit EXPAND_BOXES.
    opened = expand_group(view, (), "0", collapse_depth=1)
    assert count_boxes(view, collapse_depth=1, expanded=opened) == 6 + 25 * 3
