"""describe(): node, edge and module counts of the sample graphs, node details, provenance."""

from __future__ import annotations

import copy
import operator
from pathlib import Path

import pytest
import torch
from torch.fx import Graph, GraphModule

import sample_models
from workbench.graph.view import GraphView, describe, op_family, readable_op
from workbench.model.capture import CapturedModel

SAMPLES_DIR = Path(sample_models.__file__).resolve().parent

# Measured on torch 2.13 and checked by hand: e.g. digits_cnn has 14 parameters + 12 BN
# buffers (26 get_attr), 17 ops, the input and the output; its 41 edges are 4 convs x 2 inputs,
# 4 batch_norms x 5, 4 relus, add x 2, 2 pools, flatten, linear x 3 and the output.
EXPECTED = {
    "digits_cnn": {
        "nodes": 45,
        "edges": 41,
        "families": {
            "input": 1,
            "output": 1,
            "param": 26,
            "conv": 4,
            "linear": 1,
            "norm": 4,
            "activation": 4,
            "pool": 2,
            "elementwise": 1,
            "shape": 1,
        },
    },
    "mobilenet": {
        "nodes": 97,
        "edges": 88,
        "families": {
            "input": 1,
            "output": 1,
            "param": 62,
            "conv": 10,
            "linear": 1,
            "norm": 10,
            "activation": 8,
            "pool": 1,
            "elementwise": 2,
            "shape": 1,
        },
    },
    "attention_mlp": {
        "nodes": 55,
        "edges": 58,
        "families": {
            "input": 1,
            "output": 1,
            "param": 23,
            "linear": 8,
            "matmul": 2,
            "norm": 3,
            "activation": 2,
            "elementwise": 4,
            "reduction": 1,
            "shape": 10,
        },
    },
}

DIGITS_MODULE_PATHS = [
    "",
    "stem",
    "stem.conv",
    "stem.bn",
    "stem.relu",
    "block1",
    "block1.conv1",
    "block1.bn1",
    "block1.conv2",
    "block1.bn2",
    "block1.relu1",
    "block1.relu_out",
    "block2",
    "block2.conv",
    "block2.bn",
    "block2.relu",
    "fc",
    "pool",
    "avgpool",
]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_sample_counts(views: dict[str, GraphView], name: str) -> None:
    view = views[name]
    expected = EXPECTED[name]
    assert len(view) == expected["nodes"]
    assert len(view.nodes) == expected["nodes"]
    assert view.family_counts() == expected["families"]
    assert len(view.edges) == expected["edges"]
    assert view.stage == "exported"
    # Edges join nodes of the view, and each edge is recorded as an input of its target.
    for src, dst in view.edges:
        assert src in view and dst in view
        assert src in view[dst].inputs


@pytest.mark.parametrize("name", list(EXPECTED))
def test_guards_fn_never_appears(captured: dict[str, CapturedModel], name: str) -> None:
    # program.module() (with guards) inserts a `_guards_fn` call_module; describe hides it.
    with_guards = captured[name].program.module()
    assert "_guards_fn" in [str(n.target) for n in with_guards.graph.nodes]
    for gm in (with_guards, captured[name].graph_module()):
        view = describe(gm)
        assert all("_guards_fn" not in n.name and n.target != "_guards_fn" for n in view.nodes)
        assert all("_guards_fn" not in e for edge in view.edges for e in edge)
        assert "_guards_fn" not in [m.path for m in view.modules.walk()]
        assert len(view) == EXPECTED[name]["nodes"]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_placeholder_is_batch_1_8_8_float32(views: dict[str, GraphView], name: str) -> None:
    inputs = [n for n in views[name].nodes if n.op == "placeholder"]
    assert [n.name for n in inputs] == ["x"]
    x = inputs[0]
    assert x.shape == ("batch", 1, 8, 8)
    assert x.dtype == "float32"
    assert x.family == "input" and x.op_name == "input"
    assert x.module == "" and x.module_chain == ()
    assert views[name]["output"].shape is None


def test_digits_conv_node_details(views: dict[str, GraphView]) -> None:
    conv = views["digits_cnn"]["conv2d"]
    assert conv.op == "call_function"
    assert conv.target == "aten.conv2d.default"
    assert conv.op_name == "conv2d"
    assert conv.family == "conv"
    assert conv.module == "stem.conv"
    assert conv.module_type == "Conv2d"
    assert conv.module_chain == ("stem", "stem.conv")
    assert conv.shape == ("batch", 16, 8, 8)
    assert conv.dtype == "float32"
    assert conv.inputs == ("x", "stem_conv_weight")
    assert [(p.node, p.target, p.shape, p.dtype) for p in conv.params] == [
        ("stem_conv_weight", "stem.conv.weight", (16, 1, 3, 3), "float32")
    ]
    # ConvBNReLU.forward is line 25 of sample_models/digits_cnn.py.
    assert conv.source == f"{SAMPLES_DIR / 'digits_cnn.py'}:25"
    assert conv.source_code == "return self.relu(self.bn(self.conv(x)))"
    line = (SAMPLES_DIR / "digits_cnn.py").read_text().splitlines()[24]
    assert line.strip() == conv.source_code


def test_digits_other_node_details(views: dict[str, GraphView]) -> None:
    view = views["digits_cnn"]
    bn = view["batch_norm"]
    assert (bn.module, bn.module_type, bn.family) == ("stem.bn", "BatchNorm2d", "norm")
    assert [p.target for p in bn.params] == [
        "stem.bn.weight",
        "stem.bn.bias",
        "stem.bn.running_mean",
        "stem.bn.running_var",
    ]
    add = view["add"]
    assert (add.module, add.module_type, add.family) == ("block1", "ResidualBlock", "elementwise")
    assert add.inputs == ("batch_norm_2", "relu")
    assert add.source == f"{SAMPLES_DIR / 'digits_cnn.py'}:44"
    assert add.source_code == "return self.relu_out(out + x)"
    flatten = view["flatten"]
    assert (flatten.module, flatten.module_chain, flatten.shape) == ("", (), ("batch", 32))
    assert flatten.source == f"{SAMPLES_DIR / 'digits_cnn.py'}:68"
    linear = view["linear"]
    assert (linear.module, linear.module_type, linear.shape) == ("fc", "Linear", ("batch", 10))
    assert [p.shape for p in linear.params] == [(10, 32), (10,)]
    # A parameter belongs to its module; BN's num_batches_tracked is an int64 scalar.
    weight = view["stem_conv_weight"]
    assert weight.is_param and weight.family == "param" and weight.source is None
    assert (weight.module, weight.shape, weight.dtype) == ("stem.conv", (16, 1, 3, 3), "float32")
    tracked = view["stem_bn_num_batches_tracked"]
    assert (tracked.shape, tracked.dtype) == ((), "int64")


def test_as_dict_round_trip_of_counts(views: dict[str, GraphView]) -> None:
    doc = views["digits_cnn"].as_dict()
    assert doc["stage"] == "exported"
    assert len(doc["nodes"]) == 45 and len(doc["edges"]) == 41
    conv = next(n for n in doc["nodes"] if n["name"] == "conv2d")
    assert conv["shape"] == ["batch", 16, 8, 8]
    assert conv["params"] == [
        {
            "node": "stem_conv_weight",
            "target": "stem.conv.weight",
            "shape": [16, 1, 3, 3],
            "dtype": "float32",
        }
    ]
    assert doc["modules"]["total_nodes"] == 45


def test_digits_module_tree(views: dict[str, GraphView]) -> None:
    view = views["digits_cnn"]
    assert [m.path for m in view.modules.walk()] == DIGITS_MODULE_PATHS
    root = view.modules
    assert (root.path, root.type, root.depth) == ("", "DigitsCNN", 0)
    assert root.total_nodes == 45
    assert root.nodes == ("x", "flatten", "output")
    block1 = view.module("block1")
    assert (block1.type, block1.depth, block1.total_nodes) == ("ResidualBlock", 1, 19)
    assert block1.nodes == ("add",)
    assert [c.path for c in block1.children] == [
        "block1.conv1",
        "block1.bn1",
        "block1.conv2",
        "block1.bn2",
        "block1.relu1",
        "block1.relu_out",
    ]
    assert view.module("stem").total_nodes == 9  # conv + weight, bn + 5 tensors, relu
    assert view.module("stem").nodes == ()
    bn = view.module("block1.bn1")
    assert (bn.type, bn.depth, bn.total_nodes) == ("BatchNorm2d", 2, 6)
    assert view.module("fc").nodes == ("fc_weight", "fc_bias", "linear")
    # Every node sits in exactly one module of the tree.
    placed = [n for m in view.modules.walk() for n in m.nodes]
    assert sorted(placed) == sorted(n.name for n in view.nodes)


def test_module_lookup_unknown_raises_key_error(views: dict[str, GraphView]) -> None:
    with pytest.raises(KeyError, match="block9"):
        views["digits_cnn"].module("block9")
    with pytest.raises(KeyError):
        views["digits_cnn"].module("stem.conv.weight")


def test_other_samples_module_totals(views: dict[str, GraphView]) -> None:
    mobilenet = views["mobilenet"]
    assert len(list(mobilenet.modules.walk())) == 44
    assert mobilenet.module("block1").total_nodes == 27
    assert mobilenet.module("down.pointwise.act").type == "ReLU6"
    assert mobilenet.module("block2.expand.act").type == "Hardswish"
    attention = views["attention_mlp"]
    attn = attention.module("block.attn")
    assert (attn.type, attn.total_nodes, len(attn.nodes)) == ("MultiHeadSelfAttention", 25, 13)
    # pos_embed is a parameter of the root model.
    assert "pos_embed" in attention.modules.nodes


@pytest.fixture(scope="module")
def prepared_views(captured: dict[str, CapturedModel]) -> tuple[GraphView, GraphView]:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    gm = captured["digits_cnn"].graph_module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(copy.deepcopy(gm), quantizer)
    return describe(gm), describe(prepared, stage="prepared")


def test_prepared_counts(prepared_views: tuple[GraphView, GraphView]) -> None:
    _, prepared = prepared_views
    assert prepared.stage == "prepared"
    # conv-bn fusion removed the 4 BNs (and their 20 tensors; 4 fused conv biases appear),
    # and 13 observers were inserted: 8 activation (Histogram) + 5 weight (PerChannelMinMax).
    assert len(prepared) == 38
    assert prepared.family_counts() == {
        "input": 1,
        "output": 1,
        "param": 10,
        "conv": 4,
        "linear": 1,
        "activation": 4,
        "pool": 2,
        "elementwise": 1,
        "shape": 1,
        "observer": 13,
    }
    observers = [n for n in prepared.nodes if n.family == "observer"]
    assert all(n.op == "call_module" for n in observers)
    assert (
        sorted(n.op_name for n in observers)
        == ["HistogramObserver"] * 8 + ["PerChannelMinMaxObserver"] * 5
    )


def test_prepared_conv_linear_keep_provenance(
    prepared_views: tuple[GraphView, GraphView],
) -> None:
    exported, prepared = prepared_views
    before = {n.provenance: n for n in exported.nodes if n.family in ("conv", "linear")}
    assert len(before) == 5
    groups = prepared.by_provenance()
    for key, node in before.items():
        assert key is not None and key[0] == "node"
        names = [n for n in groups[key] if prepared[n].family in ("conv", "linear")]
        assert len(names) == 1, key
        after = prepared[names[0]]
        assert after.family == node.family
        assert after.module == node.module
        # The weight now reaches the op through its (per-channel) weight observer.
        weight_observer = prepared[after.inputs[1]]
        assert weight_observer.op_name == "PerChannelMinMaxObserver"
        assert weight_observer.params[0].target == node.params[0].target
    # The conv keys carry the exported graph's id, so they cannot collide with pattern graphs.
    graph_ids = {key[2] for key in before}
    assert len(graph_ids) == 1
    # BatchNorms are fused away by prepare_pt2e: their keys are gone.
    bn_keys = [n.provenance for n in exported.nodes if n.family == "norm"]
    assert len(bn_keys) == 4
    assert not set(bn_keys) & set(groups)


def test_prepared_observers_are_observers(prepared_views: tuple[GraphView, GraphView]) -> None:
    _, prepared = prepared_views
    observers = [n for n in prepared.nodes if n.op == "call_module"]
    assert len(observers) == 13
    assert {n.family for n in observers} == {"observer"}
    assert all(n.name.startswith("activation_post_process_") for n in observers)
    # Observers are not nodes of the exported graph: no provenance key.
    assert [n.name for n in observers if n.provenance is not None] == []


def test_prepared_observers_have_no_provenance(
    prepared_views: tuple[GraphView, GraphView],
) -> None:
    # Regression: prepare_pt2e copies meta["from_node"] onto exactly the observers after
    # max_pool2d, adaptive_avg_pool2d and flatten (shared output specs), so provenance() gave
    # those 3 of the 13 their producer's key and by_provenance() grouped
    # ['max_pool2d', 'activation_post_process_7'] while relu's group was just ['relu'].
    prepared_nodes = prepared_views[1]
    with_from_node = [
        "activation_post_process_7",
        "activation_post_process_10",
        "activation_post_process_11",
    ]
    groups = prepared_nodes.by_provenance()
    for name in with_from_node:
        assert prepared_nodes[name].provenance is None
        producer = prepared_nodes[prepared_nodes[name].inputs[0]]
        assert groups[producer.provenance] == [producer.name]


def test_readable_op_and_family_on_real_nodes(captured: dict[str, CapturedModel]) -> None:
    gm = captured["attention_mlp"].graph_module()
    nodes = {n.name: n for n in gm.graph.nodes}
    expected = {
        "x": ("input", "input"),
        "pos_embed": ("param", "param"),
        "reshape": ("reshape", "shape"),
        "transpose": ("transpose", "shape"),
        "linear": ("linear", "linear"),
        "matmul": ("matmul", "matmul"),
        "mul": ("mul", "elementwise"),
        "softmax": ("softmax", "activation"),
        "layer_norm": ("layer_norm", "norm"),
        "gelu": ("gelu", "activation"),
        "mean": ("mean", "reduction"),
        "output": ("output", "output"),
    }
    for name, (op_name, family) in expected.items():
        assert readable_op(nodes[name], gm) == op_name, name
        assert op_family(nodes[name]) == family, name
    mobilenet = {n.name: n for n in captured["mobilenet"].graph_module().graph.nodes}
    # nn.ReLU6 exports as hardtanh; both it and hardswish are activations.
    assert (readable_op(mobilenet["hardtanh"]), op_family(mobilenet["hardtanh"])) == (
        "hardtanh",
        "activation",
    )
    assert op_family(mobilenet["hardswish"]) == "activation"
    assert op_family(mobilenet["adaptive_avg_pool2d"]) == "pool"


def test_readable_op_and_family_on_hand_built_graph() -> None:
    graph = Graph()
    x = graph.placeholder("x")
    sin = graph.call_function(torch.ops.aten.sin.default, (x,))
    relu_ = graph.call_function(torch.ops.aten.relu_, (sin,))  # an OpOverloadPacket
    split = graph.call_function(torch.ops.aten.split.Tensor, (relu_, 2))
    first = graph.call_function(operator.getitem, (split, 0))
    graph.output(first)
    gm = GraphModule(torch.nn.Module(), graph)
    assert [readable_op(n) for n in (sin, relu_, split, first)] == [
        "sin",
        "relu_",
        "split",
        "getitem",
    ]
    assert [op_family(n) for n in (sin, relu_, split, first)] == [
        "other",
        "activation",
        "shape",
        "shape",
    ]
    view = describe(gm)
    assert view.family_counts() == {
        "input": 1,
        "output": 1,
        "activation": 1,
        "shape": 2,
        "other": 1,
    }
    info = view[sin.name]
    assert (info.name, info.target, info.op_name) == ("sin_default", "aten.sin.default", "sin")
    # A hand-built graph has no meta: no shape, source, module or provenance.
    assert (info.shape, info.source, info.module, info.provenance) == (None, None, "", None)
